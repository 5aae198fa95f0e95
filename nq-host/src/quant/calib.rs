//! Calibration windows: token sequences cut from text files.
//!
//! The files are tokenized one by one (no BOS/EOS) and their ids joined,
//! with the tokenizer's EOS between files when it has one. `windows` start
//! positions are then drawn uniformly (ChaCha8, seeded) from every position
//! where a whole window of `len` tokens fits, without repeats where the text
//! is long enough. Same files, options and seed → the same windows.

use std::path::{Path, PathBuf};

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::tokenizer::{read_text_for_eval, Tokenizer, TokenizerError};

/// How to cut calibration windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalibOptions {
    /// Number of windows.
    pub windows: usize,
    /// Tokens per window.
    pub len: usize,
    /// Seed of the start-position draw.
    pub seed: u64,
}

/// Why calibration windows could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    /// No file given.
    #[error("no calibration text given")]
    NoFiles,
    /// A file could not be read.
    #[error("cannot read calibration text {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file could not be tokenized.
    #[error("cannot tokenize {path}: {source}")]
    Tokenize {
        /// The file.
        path: PathBuf,
        /// The error.
        source: TokenizerError,
    },
    /// Zero windows or a window shorter than two tokens.
    #[error("calibration needs at least 1 window of at least 2 tokens (got {windows} × {len})")]
    BadOptions {
        /// Requested windows.
        windows: usize,
        /// Requested length.
        len: usize,
    },
    /// The text is shorter than one window.
    #[error("calibration text has {tokens} tokens, fewer than one window of {len}")]
    TooShort {
        /// Tokens available.
        tokens: usize,
        /// Window length.
        len: usize,
    },
}

/// Tokenizes `files` and joins their ids (EOS between files, if any).
pub fn tokenize_files(
    tokenizer: &Tokenizer,
    files: &[impl AsRef<Path>],
) -> Result<Vec<u32>, CalibError> {
    if files.is_empty() {
        return Err(CalibError::NoFiles);
    }
    let mut ids = Vec::new();
    for (k, f) in files.iter().enumerate() {
        let path = f.as_ref();
        let text = read_text_for_eval(path).map_err(|source| CalibError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let part = tokenizer
            .encode(&text)
            .map_err(|source| CalibError::Tokenize {
                path: path.to_path_buf(),
                source,
            })?;
        if k > 0 {
            ids.extend(tokenizer.eos_id());
        }
        ids.extend(part);
    }
    Ok(ids)
}

/// Draws the windows from `ids`.
pub fn sample_windows(ids: &[u32], opts: &CalibOptions) -> Result<Vec<Vec<u32>>, CalibError> {
    let CalibOptions { windows, len, seed } = *opts;
    if windows == 0 || len < 2 {
        return Err(CalibError::BadOptions { windows, len });
    }
    if ids.len() < len {
        return Err(CalibError::TooShort {
            tokens: ids.len(),
            len,
        });
    }
    let starts_available = ids.len() - len + 1;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let starts: Vec<usize> = if windows <= starts_available {
        let mut s = sample(&mut rng, starts_available, windows).into_vec();
        s.sort_unstable();
        s
    } else {
        // More windows than distinct starts: every start, then repeats.
        (0..windows).map(|i| i % starts_available).collect()
    };
    Ok(starts.iter().map(|&s| ids[s..s + len].to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(windows: usize, len: usize, seed: u64) -> CalibOptions {
        CalibOptions { windows, len, seed }
    }

    #[test]
    fn windows_are_slices_of_the_text_and_seeded() {
        let ids: Vec<u32> = (0..1000).collect();
        let a = sample_windows(&ids, &opts(8, 50, 1)).unwrap();
        assert_eq!(a.len(), 8);
        for w in &a {
            assert_eq!(w.len(), 50);
            // Consecutive ids: a contiguous slice of the text.
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
        }
        let starts: Vec<u32> = a.iter().map(|w| w[0]).collect();
        assert!(starts.windows(2).all(|p| p[0] < p[1]), "distinct, sorted");
        assert_eq!(sample_windows(&ids, &opts(8, 50, 1)).unwrap(), a);
        assert_ne!(sample_windows(&ids, &opts(8, 50, 2)).unwrap(), a);
    }

    #[test]
    fn short_text_and_bad_options_are_errors() {
        let ids: Vec<u32> = (0..10).collect();
        assert!(matches!(
            sample_windows(&ids, &opts(1, 11, 0)),
            Err(CalibError::TooShort {
                tokens: 10,
                len: 11
            })
        ));
        assert!(matches!(
            sample_windows(&ids, &opts(0, 5, 0)),
            Err(CalibError::BadOptions { .. })
        ));
        assert!(matches!(
            sample_windows(&ids, &opts(1, 1, 0)),
            Err(CalibError::BadOptions { .. })
        ));
        // Exactly one window fits: every window is that one.
        let w = sample_windows(&ids, &opts(3, 10, 0)).unwrap();
        assert!(w.iter().all(|w| w == &ids));
    }
}
