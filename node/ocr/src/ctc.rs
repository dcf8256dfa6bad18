//! CTC greedy decoding of the recogniser's per-timestep class probabilities.

use crate::error::{Error, Result};

/// The recogniser's classes: index 0 is the CTC blank, then the model's `character`
/// list (one per line of the metadata), then a space, which PP-OCR appends as the
/// last class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charset {
    classes: Vec<String>,
}

impl Charset {
    /// From the rec model's `character` metadata value.
    pub fn from_metadata(characters: &str) -> Result<Charset> {
        let mut classes = vec![String::new()];
        classes.extend(characters.lines().map(str::to_string));
        if classes.len() == 1 {
            return Err(Error::Ocr(
                "the rec model's `character` metadata is empty".into(),
            ));
        }
        classes.push(" ".to_string());
        Ok(Charset { classes })
    }

    /// Number of classes, blank and space included: the rec output's last dim.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.len() <= 2
    }
}

/// Decoded text and its confidence (mean probability of the kept characters; 0
/// when nothing was kept).
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub text: String,
    pub confidence: f32,
}

/// Greedy CTC: the most likely class per timestep; repeats collapse, blanks
/// separate repeats and are dropped. `probabilities` is `timesteps × classes`,
/// row-major.
pub fn ctc_greedy_decode(
    probabilities: &[f32],
    classes: usize,
    charset: &Charset,
) -> Result<Decoded> {
    if classes != charset.len() || classes == 0 || !probabilities.len().is_multiple_of(classes) {
        return Err(Error::Ocr(format!(
            "rec output has {classes} classes over {} values; the charset has {} (blank and space included)",
            probabilities.len(),
            charset.len()
        )));
    }
    let mut text = String::new();
    let mut kept_probability = 0.0f32;
    let mut kept = 0usize;
    let mut previous = 0usize;
    for timestep in probabilities.chunks_exact(classes) {
        let (best, probability) =
            timestep
                .iter()
                .copied()
                .enumerate()
                .fold((0usize, f32::MIN), |best, (class, p)| {
                    if p > best.1 {
                        (class, p)
                    } else {
                        best
                    }
                });
        if best != 0 && best != previous {
            text.push_str(&charset.classes[best]);
            kept_probability += probability;
            kept += 1;
        }
        previous = best;
    }
    let confidence = if kept == 0 {
        0.0
    } else {
        kept_probability / kept as f32
    };
    Ok(Decoded { text, confidence })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charset() -> Charset {
        Charset::from_metadata("a\nb\nc").unwrap() // classes: blank, a, b, c, space
    }

    /// One-hot-ish rows: `path` lists the best class per timestep with probability 0.9.
    fn probabilities(path: &[usize], classes: usize) -> Vec<f32> {
        let mut values = vec![0.025f32; path.len() * classes];
        for (t, &class) in path.iter().enumerate() {
            values[t * classes + class] = 0.9;
        }
        values
    }

    #[test]
    fn charset_adds_blank_first_and_space_last() {
        let charset = charset();
        assert_eq!(charset.len(), 5);
        assert_eq!(charset.classes[0], "");
        assert_eq!(charset.classes[1], "a");
        assert_eq!(charset.classes[4], " ");
        assert!(Charset::from_metadata("").is_err());
    }

    #[test]
    fn repeats_collapse_and_blanks_separate() {
        let charset = charset();
        // a a _ a b b _ _ space c
        let decoded = ctc_greedy_decode(
            &probabilities(&[1, 1, 0, 1, 2, 2, 0, 0, 4, 3], 5),
            5,
            &charset,
        )
        .unwrap();
        assert_eq!(decoded.text, "aab c");
        assert!((decoded.confidence - 0.9).abs() < 1e-6);
    }

    #[test]
    fn all_blank_is_empty_with_zero_confidence() {
        let decoded = ctc_greedy_decode(&probabilities(&[0, 0, 0], 5), 5, &charset()).unwrap();
        assert_eq!(
            decoded,
            Decoded {
                text: String::new(),
                confidence: 0.0
            }
        );
    }

    #[test]
    fn a_class_count_that_disagrees_with_the_charset_is_an_error() {
        let error = ctc_greedy_decode(&probabilities(&[1], 6), 6, &charset()).unwrap_err();
        assert!(error.to_string().contains("6 classes"), "{error}");
        assert!(ctc_greedy_decode(&[0.1; 7], 5, &charset()).is_err());
    }
}
