//! [`Labels`]: a series' label values in one block of bytes, held inside the series'
//! entry when they fit.
//!
//! Every lookup compares the wanted label values with a found entry's. Kept as one
//! allocation per value behind an array of pointers, that comparison was a chain of
//! dependent cache misses (the array, then each value) on every lookup of a large
//! family; kept inline, it reads the entry's own cache lines.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// Encoded label sets up to this many bytes are held inline: with the enum's tag, a
/// [`Labels`] is 88 bytes. Four labels of 80 bytes in all fit (a service, a region, a
/// span kind and a route, typically).
const INLINE: usize = 87;

const _: () = assert!(std::mem::size_of::<Labels>() == 88);

/// Label values, in their family's label order. Encoded as the count (one byte), then
/// each value as its length (LEB128) and its UTF-8 bytes.
#[derive(Clone)]
pub struct Labels(Repr);

#[derive(Clone)]
enum Repr {
    /// The encoding, zero-padded.
    Inline([u8; INLINE]),
    /// The encoding, when it is longer than [`INLINE`].
    Shared(Arc<[u8]>),
}

impl Labels {
    /// The label set `values` (at most 255 of them).
    pub fn new(values: &[&str]) -> Self {
        assert!(values.len() <= usize::from(u8::MAX), "too many labels");
        let size = 1 + values
            .iter()
            .map(|v| varint_len(v.len()) + v.len())
            .sum::<usize>();
        let write = |out: &mut [u8]| {
            out[0] = values.len() as u8;
            let mut at = 1;
            for v in values {
                let mut n = v.len();
                while n >= 0x80 {
                    out[at] = (n as u8) | 0x80;
                    n >>= 7;
                    at += 1;
                }
                out[at] = n as u8;
                at += 1;
                out[at..at + v.len()].copy_from_slice(v.as_bytes());
                at += v.len();
            }
        };
        if size <= INLINE {
            let mut bytes = [0u8; INLINE];
            write(&mut bytes);
            Self(Repr::Inline(bytes))
        } else {
            let mut bytes = vec![0u8; size];
            write(&mut bytes);
            Self(Repr::Shared(bytes.into()))
        }
    }

    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline(b) => b,
            Repr::Shared(b) => b,
        }
    }

    /// How many values.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.bytes()[0])
    }

    /// True when there is no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values in order.
    pub fn iter(&self) -> Iter<'_> {
        let bytes = self.bytes();
        Iter {
            bytes,
            at: 1,
            left: usize::from(bytes[0]),
        }
    }

    /// Value `i`, if there are more than `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.iter().nth(i)
    }

    /// The values as owned strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }

    /// True when the values are `values`, in order: the comparison of every lookup.
    #[inline(always)]
    pub fn matches(&self, values: &[&str]) -> bool {
        let bytes = self.bytes();
        if usize::from(bytes[0]) != values.len() {
            return false;
        }
        let mut at = 1;
        for v in values {
            let (len, used) = match bytes.get(at) {
                Some(&b) if b < 0x80 => (usize::from(b), 1),
                _ => varint(&bytes[at..]),
            };
            at += used;
            match bytes.get(at..at + len) {
                Some(stored) if crate::otlp::same_bytes(stored, v.as_bytes()) => at += len,
                _ => return false,
            }
        }
        true
    }
}

/// The values of a [`Labels`], in order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    bytes: &'a [u8],
    at: usize,
    left: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (len, used) = varint(&self.bytes[self.at..]);
        let start = self.at + used;
        self.at = start + len;
        let value = &self.bytes[start..self.at];
        // SAFETY: `Labels::new` wrote these bytes from a `&str`, and the cut is at the
        // boundaries it wrote.
        Some(unsafe { std::str::from_utf8_unchecked(value) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a str;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl std::ops::Index<usize> for Labels {
    type Output = str;

    fn index(&self, i: usize) -> &str {
        match self.get(i) {
            Some(v) => v,
            None => panic!("label {i} of {}", self.len()),
        }
    }
}

/// Ordered as the list of values (each compared as a string), like a `Vec<String>`.
impl Ord for Labels {
    fn cmp(&self, other: &Self) -> Ordering {
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Labels {}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// A length written by [`Labels::new`], and how many bytes it took.
#[inline]
fn varint(bytes: &[u8]) -> (usize, usize) {
    let mut n = 0usize;
    for (i, b) in bytes.iter().enumerate() {
        n |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (n, i + 1);
        }
    }
    unreachable!("a length written by Labels::new ends")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_inline_or_shared() {
        let long = "r".repeat(300);
        for values in [
            vec![],
            vec![""],
            vec!["checkout", "eu-west-1", "server", "/api/checkout"],
            vec!["checkout", long.as_str(), "", "é"],
        ] {
            let labels = Labels::new(&values);
            assert_eq!(labels.len(), values.len());
            assert_eq!(labels.iter().collect::<Vec<_>>(), values);
            assert!(labels.matches(&values));
            for (i, v) in values.iter().enumerate() {
                assert_eq!(&labels[i], *v);
            }
            assert_eq!(labels.get(values.len()), None);
        }
        assert!(matches!(Labels::new(&["a"; 4]).0, Repr::Inline(_)));
        assert!(matches!(Labels::new(&[long.as_str()]).0, Repr::Shared(_)));
    }

    #[test]
    fn matches_only_the_same_values() {
        let labels = Labels::new(&["checkout", "eu-west-1", "server"]);
        assert!(!labels.matches(&["checkout", "eu-west-1"]));
        assert!(!labels.matches(&["checkout", "eu-west-1", "server", ""]));
        assert!(!labels.matches(&["checkout", "eu-west-2", "server"]));
        assert!(!labels.matches(&["checkout", "eu-west-1s", "erver"]));
        assert!(!labels.matches(&["checkou", "teu-west-1", "server"]));
        let long = "x".repeat(200);
        let labels = Labels::new(&[long.as_str(), "a"]);
        assert!(labels.matches(&[long.as_str(), "a"]));
        assert!(!labels.matches(&[&long[1..], "a"]));
    }

    #[test]
    fn ordered_like_a_list_of_strings() {
        let sets: [&[&str]; 6] = [
            &["b"],
            &["ab", "z"],
            &["ab"],
            &["a", "zz"],
            &[],
            &["ab", "y", "q"],
        ];
        let mut want: Vec<Vec<&str>> = sets.iter().map(|s| s.to_vec()).collect();
        want.sort();
        let mut got: Vec<Labels> = sets.iter().map(|s| Labels::new(s)).collect();
        got.sort();
        let got: Vec<Vec<&str>> = got.iter().map(|l| l.iter().collect()).collect();
        assert_eq!(got, want);
    }
}
