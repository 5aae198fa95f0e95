//! The GPT-2 byte ↔ character mapping, undone.
//!
//! Byte-level BPE vocabularies spell every byte as a printable character
//! (space becomes `Ġ`, newline `Ċ`, …) so that tokens are valid strings. A
//! runtime only needs the bytes a token stands for; this module maps the
//! characters back. It is the same table as `bytes_to_unicode()` in OpenAI's
//! GPT-2 encoder and `tokenizers`' `ByteLevel`, written out here because the
//! crate keeps its copy private.

/// The GPT-2 byte alphabet in both directions.
pub(crate) struct ByteAlphabet {
    /// Character → byte, indexed by code point (all mapped characters are
    /// below U+0144); `None` where the code point stands for no byte.
    byte_of: [Option<u8>; 324],
    /// Byte → character.
    char_of: [char; 256],
}

impl ByteAlphabet {
    /// Builds GPT-2's `bytes_to_unicode()` and its inverse.
    pub(crate) fn new() -> Self {
        let mut byte_of = [None; 324];
        let mut char_of = ['\0'; 256];
        let mut next_shifted = 0usize;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            // Printable Latin-1 bytes stand for themselves; the other 68 get
            // U+0100, U+0101, … in byte order.
            let code = if printable {
                usize::from(b)
            } else {
                next_shifted += 1;
                255 + next_shifted
            };
            byte_of[code] = Some(b);
            // `code` < 324, always a valid scalar value.
            char_of[usize::from(b)] = char::from_u32(code as u32).unwrap_or('\0');
        }
        Self { byte_of, char_of }
    }

    /// The character that spells byte `b`.
    pub(crate) fn char(&self, b: u8) -> char {
        self.char_of[usize::from(b)]
    }

    /// The byte `c` stands for, or `None` if it is not a byte-level character.
    pub(crate) fn byte(&self, c: char) -> Option<u8> {
        self.byte_of.get(c as usize).copied().flatten()
    }

    /// The bytes a vocabulary string stands for. Like `tokenizers`'
    /// `ByteLevel` decoder, a string with any character outside the mapping
    /// (an added token such as `<|im_start|>` written in plain text never has
    /// one, but a user-added `é` would) is taken as its own UTF-8.
    pub(crate) fn token_bytes(&self, token: &str) -> Vec<u8> {
        token
            .chars()
            .map(|c| self.byte(c))
            .collect::<Option<Vec<u8>>>()
            .unwrap_or_else(|| token.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::ByteAlphabet;

    #[test]
    fn every_byte_has_exactly_one_char() {
        let d = ByteAlphabet::new();
        let mut seen = [false; 256];
        for code in 0..324u32 {
            if let Some(b) = char::from_u32(code).and_then(|c| d.byte(c)) {
                assert!(!seen[usize::from(b)], "byte {b} mapped twice");
                assert_eq!(d.char(b) as u32, code);
                seen[usize::from(b)] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn known_characters() {
        let d = ByteAlphabet::new();
        assert_eq!(d.byte('Ġ'), Some(b' '));
        assert_eq!(d.byte('Ċ'), Some(b'\n'));
        assert_eq!(d.byte('ĉ'), Some(b'\t'));
        assert_eq!(d.byte('č'), Some(b'\r'));
        assert_eq!(d.byte('A'), Some(b'A'));
        assert_eq!(d.byte('Ā'), Some(0));
        assert_eq!(d.byte('ł'), Some(0xA0));
        assert_eq!(d.byte('Ń'), Some(0xAD));
        assert_eq!(d.byte('ń'), None);
        assert_eq!(d.token_bytes("ĠHello"), b" Hello");
        assert_eq!(d.token_bytes("Ã©"), "é".as_bytes());
    }
}
