//! Reading an evaluation text exactly as the perplexity protocol says
//! (EVAL.md step 1): bytes, a leading UTF-8 BOM dropped, nothing else changed.
//! No newline normalization and no trimming: every byte counts toward the
//! token ids the reference numbers were computed on.

use std::io;
use std::path::Path;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads `path` as UTF-8 text, dropping one leading byte-order mark and
/// changing nothing else (`\r\n` stays `\r\n`). Invalid UTF-8 is an
/// [`io::ErrorKind::InvalidData`] error naming the file and byte offset.
pub fn read_text_for_eval(path: impl AsRef<Path>) -> io::Result<String> {
    let path = path.as_ref();
    let mut bytes = std::fs::read(path)?;
    if bytes.starts_with(UTF8_BOM) {
        bytes.drain(..UTF8_BOM.len());
    }
    String::from_utf8(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: not valid UTF-8 at byte {} (after any BOM)",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        )
    })
}
