//! Every bound the protocol works within, named in one place.
//!
//! The sizes of individual message bodies live next to their encoders in `message.rs`;
//! the assertions at the bottom of that file check they fit in [`BODY_BYTES_MAX`].

/// Bytes in the length prefix that opens every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Bytes of the fixed header that follows the length prefix: version (1), MAC algorithm
/// (1), message type (2), terminal id (4), sequence (8), timestamp (8).
pub const HEADER_BYTES: usize = 1 + 1 + 2 + 4 + 8 + 8;

/// Bytes of the MAC that closes every frame, whatever the algorithm.
pub const MAC_BYTES: usize = 16;

/// The smallest frame on the wire: length prefix, header, an empty body, the MAC.
pub const FRAME_BYTES_MIN: usize = LENGTH_PREFIX_BYTES + HEADER_BYTES + MAC_BYTES;

/// The largest frame on the wire, length prefix included. A declared length above this
/// is refused before a single byte of the body is buffered.
pub const FRAME_BYTES_MAX: usize = 8 * 1024;

/// The largest body a frame can carry.
pub const BODY_BYTES_MAX: usize = FRAME_BYTES_MAX - FRAME_BYTES_MIN;

/// How far above the highest sequence the server has seen from a terminal a new
/// request may jump: gaps are allowed (a terminal skips what it never sent), but one
/// frame may not spend the terminal's sequence space and leave it nothing above. Ten
/// million is some five thousand days of a busy canteen window.
pub const SEQUENCE_JUMP_MAX: u64 = 10_000_000;

/// Transactions in one offline upload. A terminal with more sends several uploads.
pub const OFFLINE_RECORDS_MAX: usize = 64;

/// Entries in one blacklist delta answer. A terminal further behind asks again.
pub const BLACKLIST_ENTRIES_MAX: usize = 256;

/// Bytes of a top-up's external reference (the channel's own order number).
pub const EXTERNAL_REFERENCE_BYTES_MAX: usize = 32;

/// Bytes of the leader's terminal address a `Redirect` carries (`host:port`, ASCII).
pub const REDIRECT_ADDRESS_BYTES_MAX: usize = 64;

/// Shortest PIN a cardholder may set.
pub const PIN_DIGITS_MIN: usize = 4;

/// Longest PIN that fits a PIN block.
pub const PIN_DIGITS_MAX: usize = 12;

/// Requests a terminal may have unanswered on one connection. The server answers the
/// next one with `ServerBusy` until an answer goes out.
pub const PIPELINE_REQUESTS_MAX: usize = 64;

const _: () = assert!(FRAME_BYTES_MIN == 44);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_BYTES_MAX > FRAME_BYTES_MIN);
const _: () = assert!(PIN_DIGITS_MIN <= PIN_DIGITS_MAX);
// A PIN block holds a length nibble, a control nibble and up to 14 digit nibbles.
const _: () = assert!(PIN_DIGITS_MAX <= 14);
const _: () = assert!(EXTERNAL_REFERENCE_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(OFFLINE_RECORDS_MAX <= u16::MAX as usize);
const _: () = assert!(REDIRECT_ADDRESS_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(BLACKLIST_ENTRIES_MAX <= u16::MAX as usize);
