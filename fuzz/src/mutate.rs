//! A seeded, coverage-free mutator: the bounded pass `cargo test` runs
//! over every target, reproducible from its seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Target;

/// Largest input the mutator builds.
const MAX_INPUT_BYTES: usize = 64 * 1024;

/// Bytes that change how a parser reads what follows.
const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xfb, 0xfc, 0xfd, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b'0', b'-',
    b'.', b'e', b'(', b')', b'=', b'\n',
];

/// Lengths and counts at the edges: bincode's varint markers, the frame
/// and record limits, the sign bits.
const INTERESTING_U32: &[u32] = &[
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    64 * 1024 * 1024,
    64 * 1024 * 1024 + 1,
    256 * 1024 * 1024 + 1,
];

/// Mutates corpus entries with a seeded RNG.
pub struct Mutator {
    rng: StdRng,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A mutant of a random corpus entry: one to four edits, some of them
    /// splices from another entry.
    pub fn next_input(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut input = match corpus.len() {
            0 => Vec::new(),
            len => corpus[self.rng.gen_range(0..len)].clone(),
        };
        let edits = self.rng.gen_range(1..=4);
        for _ in 0..edits {
            self.edit(&mut input, corpus);
        }
        input.truncate(MAX_INPUT_BYTES);
        input
    }

    fn edit(&mut self, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let len = input.len();
        match self.rng.gen_range(0..8) {
            0 if len > 0 => {
                let at = self.rng.gen_range(0..len);
                input[at] ^= 1 << self.rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let at = self.rng.gen_range(0..len);
                input[at] = INTERESTING_BYTES[self.rng.gen_range(0..INTERESTING_BYTES.len())];
            }
            2 if len >= 4 => {
                let at = self.rng.gen_range(0..=len - 4);
                let value = INTERESTING_U32[self.rng.gen_range(0..INTERESTING_U32.len())];
                let bytes = if self.rng.gen() {
                    value.to_le_bytes()
                } else {
                    value.to_be_bytes()
                };
                input[at..at + 4].copy_from_slice(&bytes);
            }
            3 => {
                let at = self.rng.gen_range(0..=len);
                let count = self.rng.gen_range(1..=16);
                let inserted: Vec<u8> = (0..count).map(|_| self.rng.gen()).collect();
                input.splice(at..at, inserted);
            }
            4 if len > 0 => {
                let start = self.rng.gen_range(0..len);
                let end = self.rng.gen_range(start..=len.min(start + 64));
                input.drain(start..end);
            }
            5 if len > 0 => {
                let start = self.rng.gen_range(0..len);
                let end = self.rng.gen_range(start..=len.min(start + 64));
                let copy = input[start..end].to_vec();
                let at = self.rng.gen_range(0..=len);
                input.splice(at..at, copy);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[self.rng.gen_range(0..corpus.len())];
                if other.is_empty() {
                    return;
                }
                let start = self.rng.gen_range(0..other.len());
                let end = self.rng.gen_range(start..=other.len());
                let at = self.rng.gen_range(0..=len);
                input.truncate(at);
                input.extend_from_slice(&other[start..end]);
            }
            _ if len > 0 => {
                let cut = self.rng.gen_range(0..len);
                input.truncate(cut);
            }
            _ => input.push(self.rng.gen()),
        }
    }
}

/// Runs `target` on `count` mutants of `corpus` from `seed`; returns how
/// many ran. A broken promise panics with the offending input's index.
pub fn run(target: Target, corpus: &[Vec<u8>], seed: u64, count: usize) -> usize {
    let mut mutator = Mutator::new(seed);
    for index in 0..count {
        let input = mutator.next_input(corpus);
        let outcome = std::panic::catch_unwind(|| target(&input));
        if let Err(panic) = outcome {
            eprintln!("mutant {index} of seed {seed} failed; input: {input:?}");
            std::panic::resume_unwind(panic);
        }
    }
    count
}
