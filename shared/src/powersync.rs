//! PowerSync's sync protocol, spoken by edgesync: the pure parts of `POST /sync/stream`
//! and `GET /write-checkpoint2.json` (design: `docs/design/powersync-protocol.md`).
//!
//! The stock PowerSync SDKs sync against edgesync without a PowerSync Service. A client
//! posts the buckets it holds with the last op id it has of each (`after`), and the server
//! answers with a never-ending stream of NDJSON lines:
//!
//! ```text
//! {"checkpoint":{"last_op_id":"<h>","write_checkpoint":"<W << 24>","buckets":[…]}}
//! {"data":{"bucket":"entries:<user>", …ops…}}          -- pages, rendered by the database
//! {"checkpoint_complete":{"last_op_id":"<h>"}}          -- the client validates checksums now
//! {"checkpoint_diff":{…}} … {"checkpoint_complete":…}   -- later checkpoints
//! {"token_expires_in":<seconds>}                        -- keepalives, expiry
//! ```
//!
//! Here a bucket is one synced table of one user, named `<table>:<user uuid>` (§2.1). Op
//! ids are `block << 24 | seq`, where a block is a sync position (migration 0012); a
//! checkpoint at watermark `W` covers exactly the ops of blocks below `W`, so its
//! `last_op_id` is `(W << 24) - 1` (§2.2). The database keeps a data-less op log and
//! serves checkpoints (`edgesync_ps_checkpoint`) and pages of ops (`edgesync_ps_page`);
//! pages stay bytes in the Worker.
//!
//! The parts:
//!
//! - [`op_id`]: the op-id arithmetic, checked (no op id leaves the `i64` range the
//!   client parses).
//! - [`request`]: the request body, the bucket names it carries, the resume points and
//!   the checkpoint floor, and the `Authorization: Token …` scheme.
//! - [`lines`]: the lines edgesync writes, the checkpoint RPC's answer and the page
//!   RPC's trailer.
//! - [`stream`]: [`StreamLoop`], the stream's decisions as a sans-I/O state machine
//!   driven by the Worker (like [`crate::live::LongPoll`]).
//!
//! Like the rest of this crate it never reads the clock: callers pass `now_ms`.

use crate::ApiError;

pub mod drive;
pub mod lines;
pub mod op_id;
pub mod request;
pub mod stream;

pub use drive::StreamIo;
pub use lines::{
    checkpoint_complete_line, checkpoint_diff_line, checkpoint_line, diff, split_page, token_expires_in_line,
    write_checkpoint_answer, BucketChecksum, Checkpoint, CheckpointDiff, PageTrailer,
};
pub use op_id::{
    block_of, floor_from_after, last_op_id, op_id, parse_op_id, write_checkpoint, MAX_OP_ID, MAX_SEQ, POSITION_LIMIT,
    SEQ_BITS,
};
pub use request::{bucket_name, powersync_token, too_large_request, BucketRequest, Resume, StreamingSyncRequest};
pub use stream::{Action, EndReason, StreamLimits, StreamLoop, StreamStats, Turn};

/// The RPC that computes a checkpoint: `edgesync_ps_checkpoint(p_floor)`.
pub const CHECKPOINT_RPC: &str = "edgesync_ps_checkpoint";
/// The RPC that renders a page of ops as NDJSON text: `edgesync_ps_page`.
pub const PAGE_RPC: &str = "edgesync_ps_page";
/// The RPC behind `/write-checkpoint2.json`: the sync sequence's next value.
pub const WRITE_CHECKPOINT_RPC: &str = "edgesync_ps_write_checkpoint";
/// The content type of the stream. The SDK also accepts a BSON stream, which edgesync
/// does not speak; it decodes BSON only when answered with exactly that type (§1.1).
pub const STREAM_CONTENT_TYPE: &str = "application/x-ndjson";

/// The stream's headers besides CORS: its type, and no cache, compression or buffering
/// on the way, so keepalives arrive.
pub const STREAM_HEADERS: [(&str, &str); 3] =
    [("content-type", STREAM_CONTENT_TYPE), ("cache-control", "no-store, no-transform"), ("x-accel-buffering", "no")];
/// Ops per page RPC, and about how many bytes (the database's own caps are higher).
pub const PAGE_OPS: u32 = 1000;
pub const PAGE_BYTES: u32 = 4 * 1024 * 1024;

/// The arguments of [`PAGE_RPC`]: the checkpoint `h` and each bucket's position, as
/// decimal strings (PostgREST passes them to `xid8`/`bigint` parameters exactly).
pub fn page_args(h: u64, after: &std::collections::BTreeMap<String, u64>) -> String {
    let after: serde_json::Map<String, serde_json::Value> =
        after.iter().map(|(t, a)| (t.clone(), serde_json::Value::String(a.to_string()))).collect();
    serde_json::json!({"p_h": h.to_string(), "p_after": after, "p_lim": PAGE_OPS, "p_max_bytes": PAGE_BYTES})
        .to_string()
}

/// A [`PAGE_RPC`] answer (PostgREST answers a `text` function as a JSON string): the
/// page's lines, to send as they are, and its trailer.
pub fn page_answer(answer: &[u8]) -> Result<(Vec<u8>, PageTrailer), ApiError> {
    let text: String = serde_json::from_slice(answer).map_err(|e| {
        ApiError::bad_gateway("upstream_bad_response", "the page answer is not text").with_log_detail(e.to_string())
    })?;
    let (lines, trailer) = split_page(text.as_bytes())?;
    // The lines are the text's head: keep them in place rather than copy them.
    let n = lines.len();
    let mut lines = text.into_bytes();
    lines.truncate(n);
    Ok((lines, trailer))
}

/// The arguments of [`CHECKPOINT_RPC`]: the floor as a decimal string (an `xid8`).
pub fn checkpoint_args(floor: u64) -> serde_json::Value {
    serde_json::json!({ "p_floor": floor.to_string() })
}

/// Does `text` hold a JSON object (judged by its first byte)? serde's derived structs
/// also accept an array of their fields in order, which no side of this protocol sends.
fn is_json_object(text: &[u8]) -> bool {
    text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_args_carry_positions_as_exact_decimal_strings() {
        let after = [("entries".to_owned(), u64::MAX), ("notes".to_owned(), 0)].into_iter().collect();
        let v: serde_json::Value = serde_json::from_str(&page_args(1 << 40, &after)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"p_h": (1u64 << 40).to_string(), "p_after": {"entries": u64::MAX.to_string(), "notes": "0"},
                               "p_lim": PAGE_OPS, "p_max_bytes": PAGE_BYTES})
        );
    }

    #[test]
    fn a_page_answer_is_a_json_string_of_lines_then_the_trailer() {
        let text = "{\"data\":1}\n{\"data\":2}\n{\"_es\":{\"next\":{\"entries\":\"5\"},\"more\":[\"entries\"]}}";
        let (lines, trailer) = page_answer(serde_json::to_string(text).unwrap().as_bytes()).unwrap();
        assert_eq!(lines, b"{\"data\":1}\n{\"data\":2}\n");
        assert_eq!(trailer.next.get("entries"), Some(&5));
        assert_eq!(trailer.more, vec!["entries".to_owned()]);
        // Not a JSON string (PostgREST's error, a proxy's page): a 502, its body kept for the log.
        for bad in [&b"{\"message\":\"boom\"}"[..], b"<html>", b""] {
            let e = page_answer(bad).unwrap_err();
            assert_eq!((e.status, e.code), (502, "upstream_bad_response"));
        }
    }
}
