//! Reading back what the Redis publisher wrote.

/// `XRANGE` entries: (entry id, [(field, value)]).
pub type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// Reads FastStream's `BinaryMessageFormatV1` back: headers and body.
pub fn parse_envelope(bytes: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    assert_eq!(
        &bytes[..8],
        &[0x89, b'B', b'I', b'N', 0x0D, 0x0A, 0x1A, 0x0A],
        "magic"
    );
    let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]) as usize;
    let u32_at = |i: usize| {
        u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize
    };
    assert_eq!(u16_at(8), 1, "version");
    assert_eq!(u32_at(10), 18, "headers offset");
    let data_offset = u32_at(14);
    let count = u16_at(18);
    let mut at = 20;
    let mut headers = Vec::new();
    for _ in 0..count {
        let mut text = || {
            let len = u16_at(at);
            let s = String::from_utf8(bytes[at + 2..at + 2 + len].to_vec()).unwrap();
            at += 2 + len;
            s
        };
        let key = text();
        let value = text();
        headers.push((key, value));
    }
    assert_eq!(
        at, data_offset,
        "data offset points right after the headers"
    );
    (headers, bytes[data_offset..].to_vec())
}
