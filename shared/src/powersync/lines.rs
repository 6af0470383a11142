//! What the stream says, and what the database answers: the protocol's lines (design
//! §1.3), the checkpoint RPC's answer and the page RPC's trailer (§2.4).
//!
//! Every line is one JSON object built with serde, followed by `\n`. Op ids and write
//! checkpoints are JSON strings (the client parses them into `i64`), checksums are JSON
//! numbers (u32; the client adds them wrapping).

use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

use super::op_id::{last_op_id, parse_op_id, write_checkpoint};
use super::request::bucket_name;
use crate::sync::valid_table_name;
use crate::ApiError;

/// Every bucket's priority: PowerSync's lowest, the default (design §2.1; R15).
pub const PRIORITY: u8 = 3;

/// One bucket of a checkpoint: a synced table of the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketChecksum {
    pub table: String,
    /// The wrapping sum of the checksums of the bucket's ops up to the checkpoint.
    pub checksum: u32,
    /// How many ops that is (the client shows it as progress).
    pub count: u64,
    /// The bucket's largest op id at or below the checkpoint's `last_op_id`, 0 for
    /// none. Not sent: it tells the stream which buckets have ops to page.
    pub last: u64,
}

/// A checkpoint: the state of every bucket of the user at watermark `w`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The watermark: every sync position below it is committed and visible.
    pub w: u64,
    /// `(w << 24) - 1`: the checkpoint covers exactly the op ids up to this one.
    pub last_op_id: u64,
    /// `w << 24`: the client applies its own uploads once it sees a checkpoint whose
    /// write checkpoint is at least the one `/write-checkpoint2.json` gave it.
    pub write_checkpoint: u64,
    /// Sorted by table, each table once.
    pub buckets: Vec<BucketChecksum>,
}

impl Checkpoint {
    /// A checkpoint at `w` with these buckets (sorted here), or `None` when `w` is not
    /// a watermark an op id can express (0, or `>= 2^39`), a table is listed twice, or a
    /// bucket's `last` is above the checkpoint.
    pub fn new(w: u64, mut buckets: Vec<BucketChecksum>) -> Option<Checkpoint> {
        let last_op_id = last_op_id(w)?;
        let write_checkpoint = write_checkpoint(w)?;
        buckets.sort_by(|a, b| a.table.cmp(&b.table));
        let unique = buckets.windows(2).all(|pair| pair[0].table != pair[1].table);
        (unique && buckets.iter().all(|b| b.last <= last_op_id)).then_some(Checkpoint {
            w,
            last_op_id,
            write_checkpoint,
            buckets,
        })
    }

    /// Read `edgesync_ps_checkpoint`'s answer:
    /// `{"w": "<decimal>", "buckets": [{"tbl", "checksum", "count", "last": "<op id>"}]}`,
    /// strictly (unknown fields, numbers as strings or strings as numbers are refused).
    /// `last_op_id` and `write_checkpoint` are derived from `w`; an answer that carries
    /// them too must agree.
    pub fn parse(answer: &[u8]) -> Result<Checkpoint, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            w: String,
            #[serde(default)]
            last_op_id: Option<String>,
            #[serde(default)]
            write_checkpoint: Option<String>,
            buckets: Vec<WireBucket>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct WireBucket {
            tbl: String,
            checksum: u32,
            count: u64,
            last: String,
        }
        let bad = |what: &str| {
            ApiError::bad_gateway("upstream_bad_response", format!("the checkpoint answer has no valid {what}"))
        };
        let wire: Wire = serde_json::from_slice(answer).map_err(|e| bad("shape").with_log_detail(e.to_string()))?;
        if !super::is_json_object(answer) {
            return Err(bad("shape"));
        }
        let w = parse_op_id(&wire.w).ok_or_else(|| bad("w"))?;
        let mut buckets = Vec::with_capacity(wire.buckets.len());
        for b in wire.buckets {
            if !valid_table_name(&b.tbl) {
                return Err(bad("tbl"));
            }
            if b.count > i64::MAX as u64 {
                return Err(bad("count"));
            }
            let last = parse_op_id(&b.last).ok_or_else(|| bad("last"))?;
            buckets.push(BucketChecksum { table: b.tbl, checksum: b.checksum, count: b.count, last });
        }
        let cp = match last_op_id(w).and(write_checkpoint(w)) {
            Some(_) => Checkpoint::new(w, buckets).ok_or_else(|| bad("buckets (a table twice, or `last` above it)"))?,
            None => return Err(bad("w (a watermark from 1 to 2^39 - 1)")),
        };
        let agrees = |given: &Option<String>, derived: u64| given.as_ref().is_none_or(|g| g == &derived.to_string());
        if !agrees(&wire.last_op_id, cp.last_op_id) {
            return Err(bad("last_op_id (it must be (w << 24) - 1)"));
        }
        if !agrees(&wire.write_checkpoint, cp.write_checkpoint) {
            return Err(bad("write_checkpoint (it must be w << 24)"));
        }
        Ok(cp)
    }

    /// The bucket of `table`, if the checkpoint lists it.
    pub fn bucket(&self, table: &str) -> Option<&BucketChecksum> {
        self.buckets.binary_search_by(|b| b.table.as_str().cmp(table)).ok().map(|i| &self.buckets[i])
    }
}

/// What changed from one checkpoint to the next, as a `checkpoint_diff` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointDiff<'a> {
    /// Buckets that are new, or whose checksum or count changed.
    pub updated: Vec<&'a BucketChecksum>,
    /// Tables of the buckets that are gone.
    pub removed: Vec<&'a str>,
}

/// The difference between `prev` and `next` (by table; `last` alone is no change,
/// since the client never sees it).
pub fn diff<'a>(prev: &'a Checkpoint, next: &'a Checkpoint) -> CheckpointDiff<'a> {
    let updated = next
        .buckets
        .iter()
        .filter(|b| prev.bucket(&b.table).is_none_or(|p| (p.checksum, p.count) != (b.checksum, b.count)))
        .collect();
    let removed = prev.buckets.iter().filter(|p| next.bucket(&p.table).is_none()).map(|p| p.table.as_str()).collect();
    CheckpointDiff { updated, removed }
}

/// A decimal string on the wire (op ids, write checkpoints).
struct Decimal(u64);

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

#[derive(Serialize)]
struct WireChecksum {
    bucket: String,
    checksum: u32,
    count: u64,
    priority: u8,
}

fn wire_buckets<'a>(buckets: impl IntoIterator<Item = &'a BucketChecksum>, user: &str) -> Vec<WireChecksum> {
    buckets
        .into_iter()
        .map(|b| WireChecksum {
            bucket: bucket_name(&b.table, user),
            checksum: b.checksum,
            count: b.count,
            priority: PRIORITY,
        })
        .collect()
}

/// One line: the JSON of `value` and `\n`. These values (strings, numbers, arrays and
/// structs of them) always serialise; the fallback only keeps this free of panics.
fn json_line(value: &impl Serialize) -> String {
    let mut line = serde_json::to_string(value).unwrap_or_default();
    line.push('\n');
    line
}

/// `{"checkpoint":{"last_op_id","write_checkpoint","buckets":[{"bucket","checksum","count","priority"}]}}`:
/// a stream's first checkpoint, which lists every bucket of `user`. The client deletes
/// the buckets it holds that are not listed.
pub fn checkpoint_line(cp: &Checkpoint, user: &str) -> String {
    #[derive(Serialize)]
    struct Line {
        checkpoint: Body,
    }
    #[derive(Serialize)]
    struct Body {
        last_op_id: Decimal,
        write_checkpoint: Decimal,
        buckets: Vec<WireChecksum>,
    }
    json_line(&Line {
        checkpoint: Body {
            last_op_id: Decimal(cp.last_op_id),
            write_checkpoint: Decimal(cp.write_checkpoint),
            buckets: wire_buckets(&cp.buckets, user),
        },
    })
}

/// `{"checkpoint_diff":{"last_op_id","write_checkpoint","updated_buckets","removed_buckets"}}`:
/// every later checkpoint, even one with no bucket change (it carries the new write
/// checkpoint, which replaces the client's).
pub fn checkpoint_diff_line(prev: &Checkpoint, next: &Checkpoint, user: &str) -> String {
    #[derive(Serialize)]
    struct Line {
        checkpoint_diff: Body,
    }
    #[derive(Serialize)]
    struct Body {
        last_op_id: Decimal,
        write_checkpoint: Decimal,
        updated_buckets: Vec<WireChecksum>,
        removed_buckets: Vec<String>,
    }
    let d = diff(prev, next);
    json_line(&Line {
        checkpoint_diff: Body {
            last_op_id: Decimal(next.last_op_id),
            write_checkpoint: Decimal(next.write_checkpoint),
            updated_buckets: wire_buckets(d.updated, user),
            removed_buckets: d.removed.iter().map(|t| bucket_name(t, user)).collect(),
        },
    })
}

/// `{"checkpoint_complete":{"last_op_id"}}`: every op of the checkpoint was sent; the
/// client checks its checksums and applies it.
pub fn checkpoint_complete_line(last_op_id: u64) -> String {
    #[derive(Serialize)]
    struct Line {
        checkpoint_complete: Body,
    }
    #[derive(Serialize)]
    struct Body {
        last_op_id: Decimal,
    }
    json_line(&Line { checkpoint_complete: Body { last_op_id: Decimal(last_op_id) } })
}

/// `{"token_expires_in":<seconds>}`: the keepalive, and the expiry warning. At 30 s or
/// less the client fetches a new token and reconnects at once; at 0 or less it treats
/// the token as expired (design §1.5).
pub fn token_expires_in_line(secs: i64) -> String {
    #[derive(Serialize)]
    struct Line {
        token_expires_in: i64,
    }
    json_line(&Line { token_expires_in: secs })
}

/// The body of `/write-checkpoint2.json` for the sync sequence's next value `x`:
/// `{"data":{"write_checkpoint":"<x << 24>"}}`. A position out of the op-id range is
/// an upstream error.
fn write_checkpoint_body(x: u64) -> Result<String, ApiError> {
    #[derive(Serialize)]
    struct Body {
        data: Data,
    }
    #[derive(Serialize)]
    struct Data {
        write_checkpoint: Decimal,
    }
    let wc = write_checkpoint(x).ok_or_else(|| {
        ApiError::bad_gateway("upstream_bad_response", "the write checkpoint answer has no valid position")
    })?;
    Ok(serde_json::to_string(&Body { data: Data { write_checkpoint: Decimal(wc) } }).unwrap_or_default())
}

/// `edgesync_ps_write_checkpoint`'s answer (the sync sequence's next value, a JSON
/// string of digits): that value, to poke the user's hub with, and the route's body.
pub fn write_checkpoint_answer(answer: &serde_json::Value) -> Result<(u64, String), ApiError> {
    let x = answer.as_str().and_then(super::parse_op_id).ok_or_else(|| {
        ApiError::bad_gateway("upstream_bad_response", "the write checkpoint answer is not a position")
    })?;
    Ok((x, write_checkpoint_body(x)?))
}

/// The last line of an `edgesync_ps_page` answer:
/// `{"_es":{"next":{"<tbl>":"<op id>"},"more":["<tbl>"],"needs":"<op id>"|null}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageTrailer {
    /// Per bucket paged, the last op id sent (the bucket's new position).
    pub next: BTreeMap<String, u64>,
    /// Buckets with more ops up to the checkpoint than the page could hold.
    pub more: Vec<String>,
    /// Set when a bucket's page stopped before an op it cannot serve at this checkpoint
    /// (a newer version of the row, or a compaction, above it): the op id a checkpoint
    /// must cover before the bucket can go on. The checkpoint is not completed.
    pub needs: Option<u64>,
}

/// Split a page answer into the data lines to forward to the client as they are (empty,
/// or whole lines ending in `\n`), and its trailer. Only the trailer is parsed; the data
/// is neither copied nor read. The lines are always a prefix of `text`, so a caller that
/// owns the text can keep them by truncating it.
pub fn split_page(text: &[u8]) -> Result<(&[u8], PageTrailer), ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wire {
        #[serde(rename = "_es")]
        es: WireTrailer,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WireTrailer {
        next: BTreeMap<String, String>,
        more: Vec<String>,
        #[serde(default)]
        needs: Option<String>,
    }
    let bad =
        |what: &str| ApiError::bad_gateway("upstream_bad_response", format!("the page answer has no valid {what}"));
    let end = text.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    let start = memchr::memrchr(b'\n', &text[..end]).map_or(0, |i| i + 1);
    let (lines, trailer) = text[..end].split_at(start);
    let wire: Wire = serde_json::from_slice(trailer).map_err(|e| bad("trailer").with_log_detail(e.to_string()))?;
    if !super::is_json_object(trailer) {
        return Err(bad("trailer"));
    }
    let mut next = BTreeMap::new();
    for (table, id) in wire.es.next {
        let id = parse_op_id(&id).ok_or_else(|| bad("trailer `next` op id"))?;
        if !valid_table_name(&table) {
            return Err(bad("trailer `next` table"));
        }
        next.insert(table, id);
    }
    if !wire.es.more.iter().all(|t| valid_table_name(t)) {
        return Err(bad("trailer `more` table"));
    }
    let needs = match wire.es.needs {
        None => None,
        Some(n) => Some(parse_op_id(&n).ok_or_else(|| bad("trailer `needs` op id"))?),
    };
    Ok((lines, PageTrailer { next, more: wire.es.more, needs }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const U: &str = "6f1c0000-0000-4000-8000-000000000001";

    fn bucket(table: &str, checksum: u32, count: u64, last: u64) -> BucketChecksum {
        BucketChecksum { table: table.into(), checksum, count, last }
    }

    fn value(line: &str) -> Value {
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'), "one line: {line:?}");
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn a_checkpoint_line_has_string_op_ids_and_numeric_checksums() {
        let cp =
            Checkpoint::new(100, vec![bucket("notes", 0, 0, 0), bucket("entries", u32::MAX, 3, 99 << 24 | 2)]).unwrap();
        assert_eq!(
            value(&checkpoint_line(&cp, U)),
            json!({"checkpoint": {
                "last_op_id": ((100u64 << 24) - 1).to_string(),
                "write_checkpoint": (100u64 << 24).to_string(),
                "buckets": [
                    {"bucket": format!("entries:{U}"), "checksum": 4294967295u32, "count": 3, "priority": 3},
                    {"bucket": format!("notes:{U}"), "checksum": 0, "count": 0, "priority": 3},
                ]
            }})
        );
    }

    #[test]
    fn a_diff_lists_new_and_changed_buckets_and_removed_ones() {
        let prev = Checkpoint::new(
            100,
            vec![bucket("a", 1, 1, 5), bucket("b", 2, 2, 6), bucket("c", 3, 3, 7), bucket("d", 4, 4, 8)],
        )
        .unwrap();
        let next = Checkpoint::new(
            101,
            vec![
                bucket("a", 1, 1, 100 << 24 | 1), // only `last` moved: not sent
                bucket("b", 9, 2, 6),             // checksum changed
                bucket("c", 3, 4, 7),             // count changed
                bucket("e", 0, 0, 0),             // new
            ],
        )
        .unwrap();
        let d = diff(&prev, &next);
        assert_eq!(d.updated.iter().map(|b| b.table.as_str()).collect::<Vec<_>>(), ["b", "c", "e"]);
        assert_eq!(d.removed, ["d"]);
        assert_eq!(
            value(&checkpoint_diff_line(&prev, &next, U)),
            json!({"checkpoint_diff": {
                "last_op_id": ((101u64 << 24) - 1).to_string(),
                "write_checkpoint": (101u64 << 24).to_string(),
                "updated_buckets": [
                    {"bucket": format!("b:{U}"), "checksum": 9, "count": 2, "priority": 3},
                    {"bucket": format!("c:{U}"), "checksum": 3, "count": 4, "priority": 3},
                    {"bucket": format!("e:{U}"), "checksum": 0, "count": 0, "priority": 3},
                ],
                "removed_buckets": [format!("d:{U}")]
            }})
        );
    }

    #[test]
    fn a_diff_with_no_bucket_change_still_carries_the_new_write_checkpoint() {
        let prev = Checkpoint::new(100, vec![bucket("a", 1, 1, 5)]).unwrap();
        let next = Checkpoint::new(140, vec![bucket("a", 1, 1, 5)]).unwrap();
        assert_eq!(
            value(&checkpoint_diff_line(&prev, &next, U)),
            json!({"checkpoint_diff": {
                "last_op_id": ((140u64 << 24) - 1).to_string(),
                "write_checkpoint": (140u64 << 24).to_string(),
                "updated_buckets": [], "removed_buckets": []
            }})
        );
    }

    #[test]
    fn completion_keepalive_and_write_checkpoint_shapes() {
        assert_eq!(checkpoint_complete_line(1677721599), "{\"checkpoint_complete\":{\"last_op_id\":\"1677721599\"}}\n");
        assert_eq!(value(&token_expires_in_line(0)), json!({"token_expires_in": 0}));
        assert_eq!(value(&token_expires_in_line(3600)), json!({"token_expires_in": 3600}));
        let body: Value = serde_json::from_str(&write_checkpoint_body(7).unwrap()).unwrap();
        assert_eq!(body, json!({"data": {"write_checkpoint": (7u64 << 24).to_string()}}));
        assert_eq!(write_checkpoint_body(1 << 39).unwrap_err().status, 502);
        let (x, body) = write_checkpoint_answer(&json!("7")).unwrap();
        assert_eq!(
            (x, serde_json::from_str::<Value>(&body).unwrap()),
            (7, json!({"data": {"write_checkpoint": (7u64 << 24).to_string()}}))
        );
        for bad in [json!(7), json!(""), json!("-1"), json!("7x"), json!(null), json!((1u64 << 39).to_string())] {
            assert_eq!(write_checkpoint_answer(&bad).unwrap_err().status, 502, "{bad}");
        }
    }

    #[test]
    fn the_checkpoint_answer_is_read_and_its_op_ids_derived() {
        let answer = json!({"w": "100", "buckets": [
            {"tbl": "notes", "checksum": 4294967295u32, "count": 2, "last": ((99u64 << 24) | 3).to_string()},
            {"tbl": "entries", "checksum": 0, "count": 0, "last": "0"},
        ]});
        let cp = Checkpoint::parse(answer.to_string().as_bytes()).unwrap();
        assert_eq!(cp.w, 100);
        assert_eq!(cp.last_op_id, (100 << 24) - 1);
        assert_eq!(cp.write_checkpoint, 100 << 24);
        assert_eq!(cp.buckets, vec![bucket("entries", 0, 0, 0), bucket("notes", u32::MAX, 2, (99 << 24) | 3)]);
        assert_eq!(cp.bucket("notes").map(|b| b.count), Some(2));
        assert_eq!(cp.bucket("nope"), None);
        let with_ids = json!({"w": "100", "last_op_id": ((100u64 << 24) - 1).to_string(),
                              "write_checkpoint": (100u64 << 24).to_string(), "buckets": []});
        assert_eq!(Checkpoint::parse(with_ids.to_string().as_bytes()).unwrap().w, 100);
    }

    #[test]
    fn malformed_checkpoint_answers_are_upstream_errors() {
        let ok = |b: Value| json!({"w": "100", "buckets": [b]});
        let b = |checksum: Value, count: Value, last: Value| json!({"tbl": "t", "checksum": checksum, "count": count, "last": last});
        for answer in [
            json!(null),
            json!(["100", null, null, []]),
            json!({"w": 100, "buckets": []}),
            json!({"w": "0", "buckets": []}),
            json!({"w": "-1", "buckets": []}),
            json!({"w": (1u64 << 39).to_string(), "buckets": []}),
            json!({"w": "100"}),
            json!({"w": "100", "buckets": [], "extra": 1}),
            json!({"w": "100", "buckets": [], "last_op_id": "5"}),
            json!({"w": "100", "buckets": [], "write_checkpoint": "100"}),
            ok(b(json!(4294967296u64), json!(0), json!("0"))),
            ok(b(json!(-1), json!(0), json!("0"))),
            ok(b(json!(1.5), json!(0), json!("0"))),
            ok(b(json!(0), json!(-1), json!("0"))),
            ok(b(json!(0), json!(0), json!(0))),
            ok(b(json!(0), json!(0), json!((100u64 << 24).to_string()))),
            ok(json!({"tbl": "Bad Table", "checksum": 0, "count": 0, "last": "0"})),
            ok(json!({"tbl": "t", "checksum": 0, "count": 0, "last": "0", "more": true})),
            json!({"w": "100", "buckets": [
                {"tbl": "t", "checksum": 0, "count": 0, "last": "0"},
                {"tbl": "t", "checksum": 1, "count": 1, "last": "0"}]}),
        ] {
            let e = Checkpoint::parse(answer.to_string().as_bytes()).unwrap_err();
            assert_eq!((e.status, e.code), (502, "upstream_bad_response"), "{answer}");
        }
        assert_eq!(Checkpoint::parse(b"not json").unwrap_err().status, 502);
    }

    #[test]
    fn a_page_is_split_into_lines_to_forward_and_its_trailer() {
        let data = "{\"data\":{\"bucket\":\"a:u\"}}\n{\"data\":{\"bucket\":\"b:u\"}}\n";
        let text =
            format!("{data}{{\"_es\":{{\"next\":{{\"a\":\"17\",\"b\":\"18\"}},\"more\":[\"b\"],\"needs\":null}}}}\n");
        let text = text.as_bytes();
        let (lines, trailer) = split_page(text).unwrap();
        assert_eq!(lines, data.as_bytes());
        assert_eq!(lines.as_ptr(), text.as_ptr(), "forwarded without copying");
        assert_eq!(
            trailer,
            PageTrailer {
                next: BTreeMap::from([("a".into(), 17), ("b".into(), 18)]),
                more: vec!["b".into()],
                needs: None
            }
        );
    }

    #[test]
    fn a_page_with_only_a_trailer_forwards_nothing() {
        for text in [
            &b"{\"_es\":{\"next\":{},\"more\":[],\"needs\":\"281474976710657\"}}"[..],
            b"{\"_es\":{\"next\":{},\"more\":[]}}\n\n",
        ] {
            let (lines, trailer) = split_page(text).unwrap();
            assert!(lines.is_empty());
            assert!(trailer.next.is_empty() && trailer.more.is_empty());
        }
        let (_, t) = split_page(b"{\"_es\":{\"next\":{},\"more\":[],\"needs\":\"281474976710657\"}}").unwrap();
        assert_eq!(t.needs, Some(281_474_976_710_657));
    }

    #[test]
    fn a_page_without_a_valid_trailer_is_an_upstream_error() {
        for text in [
            &b""[..],
            b"\n",
            b"{\"data\":{}}\n",
            b"{\"_es\":{\"next\":{},\"more\":[]}}\n{\"data\":{}}\n",
            b"{\"_es\":{\"next\":{\"a\":17},\"more\":[]}}",
            b"{\"_es\":{\"next\":{\"a\":\"-1\"},\"more\":[]}}",
            b"{\"_es\":{\"next\":{\"A;\":\"1\"},\"more\":[]}}",
            b"{\"_es\":{\"next\":{},\"more\":[\"A;\"]}}",
            b"{\"_es\":{\"next\":{},\"more\":[],\"needs\":5}}",
            b"{\"_es\":{\"next\":{}}}",
            b"[{\"next\":{},\"more\":[]}]",
            b"{\"_es\":{\"next\":{},\"more\":[]},\"x\":1}",
            b"{\"data\":{}}\n{\"_es\":{\"next\":{},\"more\":[]}",
        ] {
            let e = split_page(text).unwrap_err();
            assert_eq!((e.status, e.code), (502, "upstream_bad_response"), "{}", String::from_utf8_lossy(text));
        }
    }
}
