//! Selectors (`type:value`) describe attested properties of a workload or
//! node, e.g. `unix:uid:1000`. An entry matches a caller when the entry's
//! selectors are a subset of the caller's attested selectors.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

/// Longest selector accepted, in bytes (type, colon and value).
pub const MAX_SELECTOR_LEN: usize = 1024;

/// Why a selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// There is no `:` between type and value.
    #[error("selector {0:?} must have the form type:value (e.g. unix:uid:1000)")]
    MissingColon(String),
    /// The type before the first `:` is empty or not `[a-z0-9_-]`.
    #[error("selector type {0:?} must be non-empty lowercase letters, digits, '_' or '-'")]
    BadType(String),
    /// Nothing after the `:`.
    #[error("selector {0:?} has an empty value")]
    EmptyValue(String),
    /// The value holds a control character.
    #[error("selector value must not contain control characters")]
    ControlChar,
    /// Longer than [`MAX_SELECTOR_LEN`].
    #[error("selector is longer than {MAX_SELECTOR_LEN} bytes")]
    TooLong,
}

/// One validated selector, e.g. type `unix`, value `uid:1000`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    value: String,
}

impl Selector {
    /// Builds a selector from its type and value.
    pub fn new(kind: &str, value: &str) -> Result<Self, SelectorError> {
        let whole = || format!("{kind}:{value}");
        if kind.len() + value.len() + 1 > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong);
        }
        if kind.is_empty()
            || !kind
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            return Err(SelectorError::BadType(kind.to_owned()));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(whole()));
        }
        if value.chars().any(char::is_control) {
            return Err(SelectorError::ControlChar);
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The selector type (the attestor's name), e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The value, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether the selector separates processes by something the process
    /// cannot choose for itself (its uid or gid, a systemd unit, a pod's
    /// namespace or UID, a node). `unix:path` and `unix:sha256` only name
    /// a program: any user can run the same binary, bind-mount another
    /// over a path in a mount namespace of their own, or exec the program
    /// after connecting. Of the `k8s:` selectors only `ns` and `pod-uid`
    /// are boundaries: whoever may create a pod in any namespace chooses
    /// its labels, name, image, container names and service account name.
    pub fn is_boundary(&self) -> bool {
        match self.kind.as_str() {
            "unix" => !(self.value.starts_with("path:") || self.value.starts_with("sha256:")),
            "k8s" => self.value.starts_with("ns:") || self.value.starts_with("pod-uid:"),
            _ => true,
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong);
        }
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| SelectorError::MissingColon(s.to_owned()))?;
        Self::new(kind, value)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// True when every selector in `required` is in `attested`.
pub fn is_subset(required: &[Selector], attested: &BTreeSet<Selector>) -> bool {
    required.iter().all(|s| attested.contains(s))
}

/// An inverted index from selector to the items that require it, answering
/// "which items are satisfied by these attested selectors" in time
/// proportional to the postings of the attested selectors, not to the number
/// of items.
#[derive(Debug, Clone)]
pub struct SelectorIndex<K> {
    keys: Vec<K>,
    required: Vec<usize>,
    /// Keyed with a seeded fast hash: the index is built from registrations
    /// (operator input) and only looked up with callers' selectors, so a
    /// caller cannot grow it, and SipHash here was a measurable part of a
    /// Workload API call.
    postings: HashMap<Selector, Vec<usize>, foldhash::fast::RandomState>,
}

impl<K: Clone> SelectorIndex<K> {
    /// Builds an index over `(key, selectors)` items. Items without any
    /// selector never match: an entry with no selector would otherwise be
    /// issued to every caller.
    pub fn build<'a, I>(items: I) -> Self
    where
        I: IntoIterator<Item = (K, &'a [Selector])>,
    {
        let mut keys = Vec::new();
        let mut required = Vec::new();
        let mut postings: HashMap<Selector, Vec<usize>, _> = HashMap::default();
        for (key, selectors) in items {
            let unique: BTreeSet<&Selector> = selectors.iter().collect();
            if unique.is_empty() {
                continue;
            }
            let idx = keys.len();
            keys.push(key);
            required.push(unique.len());
            for s in unique {
                postings.entry(s.clone()).or_default().push(idx);
            }
        }
        Self {
            keys,
            required,
            postings,
        }
    }

    /// Keys of every item whose selectors are all present in `attested`, in
    /// the order the items were given.
    pub fn matching<'s, I>(&self, attested: I) -> Vec<K>
    where
        I: IntoIterator<Item = &'s Selector>,
    {
        // Sorting a vector of references de-duplicates without the
        // allocations of a set.
        let mut unique: Vec<&Selector> = attested.into_iter().collect();
        unique.sort_unstable();
        unique.dedup();
        let mut hits: HashMap<usize, usize, foldhash::fast::RandomState> = HashMap::default();
        for s in unique {
            if let Some(items) = self.postings.get(s) {
                for &i in items {
                    *hits.entry(i).or_default() += 1;
                }
            }
        }
        let mut found: Vec<usize> = hits
            .into_iter()
            .filter(|&(i, n)| self.required.get(i) == Some(&n))
            .map(|(i, _)| i)
            .collect();
        found.sort_unstable();
        found
            .into_iter()
            .filter_map(|i| self.keys.get(i).cloned())
            .collect()
    }

    /// Number of indexed items.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_displays() {
        let s = sel("unix:uid:1000");
        assert_eq!(s.kind(), "unix");
        assert_eq!(s.value(), "uid:1000");
        assert_eq!(s.to_string(), "unix:uid:1000");
        assert!(matches!(
            "unix".parse::<Selector>(),
            Err(SelectorError::MissingColon(_))
        ));
        assert!(matches!(
            ":x".parse::<Selector>(),
            Err(SelectorError::BadType(_))
        ));
        assert!(matches!(
            "Unix:x".parse::<Selector>(),
            Err(SelectorError::BadType(_))
        ));
        assert!(matches!(
            "unix:".parse::<Selector>(),
            Err(SelectorError::EmptyValue(_))
        ));
        assert_eq!(
            "unix:a\nb".parse::<Selector>().unwrap_err(),
            SelectorError::ControlChar
        );
        let long = format!("unix:{}", "a".repeat(MAX_SELECTOR_LEN));
        assert_eq!(
            long.parse::<Selector>().unwrap_err(),
            SelectorError::TooLong
        );
    }

    #[test]
    fn index_matches_subsets_only() {
        let a = vec![sel("unix:uid:1000")];
        let b = vec![sel("unix:uid:1000"), sel("unix:gid:1000")];
        let c = vec![sel("unix:uid:0")];
        let empty: Vec<Selector> = vec![];
        let idx = SelectorIndex::build([
            ("a", a.as_slice()),
            ("b", b.as_slice()),
            ("c", c.as_slice()),
            ("empty", empty.as_slice()),
        ]);
        assert_eq!(idx.len(), 3);
        let caller = [
            sel("unix:uid:1000"),
            sel("unix:gid:1000"),
            sel("unix:user:x"),
        ];
        assert_eq!(idx.matching(caller.iter()), vec!["a", "b"]);
        let caller = [sel("unix:uid:1000")];
        assert_eq!(idx.matching(caller.iter()), vec!["a"]);
        let caller = [sel("unix:uid:5")];
        assert!(idx.matching(caller.iter()).is_empty());
        // Duplicate attested selectors do not inflate the count.
        let caller = [sel("unix:uid:1000"), sel("unix:uid:1000")];
        assert_eq!(idx.matching(caller.iter()), vec!["a"]);
    }

    #[test]
    fn index_agrees_with_naive_subset() {
        let pool: Vec<Selector> = (0..6).map(|i| sel(&format!("t:v{i}"))).collect();
        let mut items = Vec::new();
        for mask in 0u32..64 {
            let s: Vec<Selector> = (0..6)
                .filter(|b| mask & (1 << b) != 0)
                .map(|b| pool[b].clone())
                .collect();
            items.push((mask, s));
        }
        let idx = SelectorIndex::build(items.iter().map(|(k, s)| (*k, s.as_slice())));
        for cmask in 0u32..64 {
            let caller: BTreeSet<Selector> = (0..6)
                .filter(|b| cmask & (1 << b) != 0)
                .map(|b| pool[b].clone())
                .collect();
            let want: Vec<u32> = items
                .iter()
                .filter(|(_, s)| !s.is_empty() && is_subset(s, &caller))
                .map(|(k, _)| *k)
                .collect();
            assert_eq!(idx.matching(caller.iter()), want);
        }
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any valid selector prints and parses back to itself; any
            /// string at all parses or is refused without a panic.
            #[test]
            fn selectors_round_trip(kind in "[a-z0-9_-]{1,16}", value in "[^\\p{Cc}]{1,64}") {
                if let Ok(sel) = Selector::new(&kind, &value) {
                    let again: Selector = sel.to_string().parse().unwrap();
                    prop_assert_eq!(&again, &sel);
                    prop_assert_eq!(again.kind(), kind.as_str());
                    prop_assert_eq!(again.value(), value.as_str());
                }
            }

            #[test]
            fn any_string_parses_or_is_refused(s in "\\PC{0,300}") {
                let _ = s.parse::<Selector>();
            }
        }
    }
}
