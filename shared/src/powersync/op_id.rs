//! Op ids: `block << 24 | seq` (design §2.2).
//!
//! A block is a sync position (migration 0012) or a later value of the same sequence,
//! and `seq` numbers a transaction's ops within it, from 1. A checkpoint at watermark
//! `W` covers exactly the ops of the blocks below `W`. The client parses every op id
//! into an `i64`, so positions stay below [`POSITION_LIMIT`] (`2^39`, checked by the
//! migration) and every function here refuses values that would leave that range
//! instead of wrapping.

/// The bits of an op id that number the ops within one block.
pub const SEQ_BITS: u32 = 24;
/// The largest `seq`; `seq` starts at 1.
pub const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
/// Every position (block, watermark, write checkpoint) is below this, so that every op
/// id, `last_op_id` and `write_checkpoint` is at most `i64::MAX`.
pub const POSITION_LIMIT: u64 = 1 << (63 - SEQ_BITS);
/// The largest op id: `i64::MAX`.
pub const MAX_OP_ID: u64 = i64::MAX as u64;

/// The op id of op `seq` (1 ..= [`MAX_SEQ`]) of `block`, or `None` out of range.
pub fn op_id(block: u64, seq: u64) -> Option<u64> {
    (block < POSITION_LIMIT && (1..=MAX_SEQ).contains(&seq)).then_some(block << SEQ_BITS | seq)
}

/// The block an op id belongs to.
pub fn block_of(op_id: u64) -> u64 {
    op_id >> SEQ_BITS
}

/// The `last_op_id` of a checkpoint at watermark `w`: `(w << 24) - 1`, the largest op
/// id of the blocks below `w`. `None` for `w = 0` (no checkpoint is below every op) or
/// `w >= 2^39`.
pub fn last_op_id(w: u64) -> Option<u64> {
    (1..POSITION_LIMIT).contains(&w).then(|| (w << SEQ_BITS) - 1)
}

/// A write checkpoint on the protocol's scale: `x << 24`, for a sync position `x`
/// (the sequence's next value, or `/upload`'s `write_checkpoint`). A checkpoint at `W`
/// carries `W << 24`, which is `>= x << 24` exactly when `W >= x`.
pub fn write_checkpoint(x: u64) -> Option<u64> {
    (x < POSITION_LIMIT).then_some(x << SEQ_BITS)
}

/// The smallest watermark whose checkpoint covers op id `after` (its `last_op_id` is
/// `>= after`); 0 for `after = 0` (nothing received, no floor).
///
/// A stream's checkpoint floor is the largest of these over the buckets a client
/// resumes (design §2.4). For an `after` that is a checkpoint's `last_op_id`,
/// `(W << 24) - 1`, this is `W`, the design's `(after + 1) >> 24`. A client that was cut
/// off in the middle of a download resumes from the last op id of a data line instead,
/// in the middle of a block `b`. There `(after + 1) >> 24` would give `b`, whose
/// `last_op_id` is below the ops that client already holds: if the watermark stepped
/// back, its next checkpoint would complete with checksums that leave those ops out.
/// `b + 1` is still a watermark this server handed out (the page was served at a
/// checkpoint that covered `after`), so it is a valid floor.
pub fn floor_from_after(after: u64) -> u64 {
    if after == 0 {
        0
    } else {
        block_of(after) + 1
    }
}

/// Parse an op id sent as a decimal string: ASCII digits only (no sign, no spaces), at
/// most `i64::MAX`.
pub fn parse_op_id(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|n| *n <= MAX_OP_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_id_puts_the_block_above_24_bits_of_sequence() {
        // The design's test vector (§2.2).
        assert_eq!(op_id(16_777_216, 1), Some(281_474_976_710_657));
        assert_eq!(op_id(1, MAX_SEQ), Some((2 << 24) - 1));
        assert_eq!(block_of(281_474_976_710_657), 16_777_216);
    }

    #[test]
    fn op_ids_out_of_range_are_refused_not_wrapped() {
        assert_eq!(op_id(5, 0), None, "seq starts at 1");
        assert_eq!(op_id(5, MAX_SEQ + 1), None);
        assert_eq!(op_id(POSITION_LIMIT, 1), None);
        assert_eq!(op_id(POSITION_LIMIT - 1, MAX_SEQ), Some(MAX_OP_ID), "the largest op id is i64::MAX");
    }

    #[test]
    fn a_checkpoint_at_w_covers_the_blocks_below_w() {
        assert_eq!(last_op_id(1), Some(MAX_SEQ));
        assert_eq!(last_op_id(16_777_217), Some(281_474_976_710_656 + MAX_SEQ));
        let h = last_op_id(100).unwrap();
        assert!(op_id(99, MAX_SEQ).unwrap() <= h && op_id(100, 1).unwrap() > h);
        assert_eq!(last_op_id(0), None);
        assert_eq!(last_op_id(POSITION_LIMIT - 1), Some(MAX_OP_ID - MAX_SEQ - 1));
        assert_eq!(last_op_id(POSITION_LIMIT), None);
    }

    #[test]
    fn a_write_checkpoint_is_the_position_shifted_into_op_id_scale() {
        assert_eq!(write_checkpoint(0), Some(0));
        assert_eq!(write_checkpoint(100), Some(100 << 24));
        assert_eq!(write_checkpoint(POSITION_LIMIT - 1), Some((POSITION_LIMIT - 1) << 24));
        assert_eq!(write_checkpoint(POSITION_LIMIT), None);
        // A checkpoint at W carries a write checkpoint >= X's exactly when W >= X.
        assert!(write_checkpoint(100).unwrap() >= write_checkpoint(100).unwrap());
        assert!(write_checkpoint(99).unwrap() < write_checkpoint(100).unwrap());
    }

    #[test]
    fn the_floor_of_a_completed_checkpoint_is_its_watermark() {
        for w in [1, 2, 99, 16_777_217, POSITION_LIMIT - 1] {
            let h = last_op_id(w).unwrap();
            assert_eq!(floor_from_after(h), w, "{w}");
            assert_eq!(floor_from_after(h), (h + 1) >> SEQ_BITS, "the design's formula agrees here");
        }
        assert_eq!(floor_from_after(0), 0);
    }

    #[test]
    fn the_floor_of_a_position_inside_a_block_covers_that_position() {
        for after in [op_id(99, 1).unwrap(), op_id(99, 5).unwrap(), op_id(99, MAX_SEQ - 1).unwrap(), 1, MAX_OP_ID] {
            let w = floor_from_after(after);
            assert!(w < POSITION_LIMIT || after == MAX_OP_ID, "{after}");
            if let Some(h) = last_op_id(w) {
                assert!(h >= after, "a checkpoint at the floor must not be below what the client holds");
            }
            if w > 1 {
                assert!(last_op_id(w - 1).unwrap() < after, "and the floor is the smallest such watermark");
            }
        }
        assert_eq!(floor_from_after(op_id(99, 5).unwrap()), 100);
    }

    #[test]
    fn op_ids_on_the_wire_are_plain_decimal_strings_within_i64() {
        assert_eq!(parse_op_id("0"), Some(0));
        assert_eq!(parse_op_id("281474976710656"), Some(281_474_976_710_656));
        assert_eq!(parse_op_id("9223372036854775807"), Some(MAX_OP_ID));
        assert_eq!(parse_op_id("007"), Some(7));
        for bad in ["", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x10", "9223372036854775808", "99999999999999999999"] {
            assert_eq!(parse_op_id(bad), None, "{bad:?}");
        }
    }
}
