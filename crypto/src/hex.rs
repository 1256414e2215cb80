//! Lower-case hexadecimal, for `Debug` output of public keys and for the
//! safety-number QR payload.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Encodes bytes as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Decodes lower- or upper-case hex; `None` on odd length or a bad digit.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// The first 8 bytes of a public value as hex, followed by an ellipsis.
pub(crate) fn short(bytes: &[u8]) -> String {
    let n = bytes.len().min(8);
    format!("{}…", encode(&bytes[..n]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let data = [0u8, 1, 0xab, 0xff];
        assert_eq!(super::encode(&data), "0001abff");
        assert_eq!(super::decode("0001ABff").unwrap(), data);
        assert!(super::decode("0g").is_none());
        assert!(super::decode("abc").is_none());
    }
}
