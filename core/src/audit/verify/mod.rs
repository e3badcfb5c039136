//! Offline verification of a log or an export, line by line: every
//! record's own hash, its link to the previous record, gap-free sequence
//! numbers, every checkpoint's signature under the chain's key and its
//! match with the chain, a start at seq 1 or right after a signed
//! checkpoint, and an end covered by one. Several chains (one per server)
//! may be interleaved; each is checked on its own.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{AuditPublicKey, Checkpoint, GENESIS, Kind, hash_line};

/// One line of a log or export.
#[derive(Debug, Clone)]
pub enum Line {
    /// A record: its chain, sequence number and parsed value.
    Record {
        /// Chain (server ID).
        chain: String,
        /// Sequence number.
        seq: u64,
        /// Time (RFC 3339).
        time: String,
        /// The whole record.
        value: Value,
    },
    /// A signed checkpoint.
    Checkpoint(Checkpoint),
}

/// Reads one line's shape (not its hashes or signature).
pub fn classify(text: &str) -> Result<Line, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("checkpoint").is_some() {
        return Checkpoint::from_value(v)
            .map(Line::Checkpoint)
            .map_err(|e| format!("bad checkpoint: {e}"));
    }
    let chain = v.get("chain").and_then(Value::as_str).map(str::to_owned);
    let seq = v.get("seq").and_then(Value::as_u64);
    let time = v.get("time").and_then(Value::as_str).map(str::to_owned);
    match (chain, seq, time) {
        (Some(chain), Some(seq), Some(time)) if seq > 0 => Ok(Line::Record {
            chain,
            seq,
            time,
            value: v,
        }),
        _ => Err("not an audit record (chain, seq or time missing)".into()),
    }
}

/// The first thing wrong with a log or export.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{what}", place(*.line), chain_seq(.chain, .seq))]
pub struct VerifyError {
    /// Line number (from 1; 0 for the end of the input).
    pub line: u64,
    /// The chain concerned (empty if unknown).
    pub chain: String,
    /// The first broken record's sequence number, where one can be named.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

fn place(line: u64) -> String {
    if line == 0 {
        "at the end of the input".to_owned()
    } else {
        format!("line {line}")
    }
}

fn chain_seq(chain: &str, seq: &Option<u64>) -> String {
    match (chain.is_empty(), seq) {
        (false, Some(s)) => format!("chain {chain} record {s}: "),
        (false, None) => format!("chain {chain}: "),
        (true, Some(s)) => format!("record {s}: "),
        (true, None) => String::new(),
    }
}

/// What was verified of one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Chain (server ID).
    pub chain: String,
    /// ID of the key that signed its checkpoints.
    pub key: String,
    /// First record verified (0 if none).
    pub first_seq: u64,
    /// Last record verified.
    pub last_seq: u64,
    /// Records verified.
    pub records: u64,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// The chain resumes after records pruned up to here.
    pub pruned_through: Option<u64>,
    /// `audit.gap` records: an agent's records that never reached the
    /// chain (an anomaly, though the chain itself is intact).
    pub gaps: u64,
}

struct State {
    next_seq: u64,
    last_hash: [u8; 32],
    key: String,
    first_seq: u64,
    records: u64,
    checkpoints: u64,
    pruned_through: Option<u64>,
    /// First record not yet covered by a checkpoint.
    uncovered: Option<u64>,
    gaps: u64,
}

fn is_gap(record: &Value) -> bool {
    record.get("kind").and_then(Value::as_str) == Some(Kind::AuditGap.as_str())
}

/// Verifies lines fed in order.
pub struct Verifier {
    keys: Vec<AuditPublicKey>,
    /// Chain -> the ID of the only key that may sign its checkpoints.
    bound: BTreeMap<String, String>,
    chains: BTreeMap<String, State>,
    line: u64,
}

impl Verifier {
    /// A verifier trusting checkpoints signed by `keys`.
    pub fn new(keys: Vec<AuditPublicKey>) -> Self {
        Self {
            keys,
            bound: BTreeMap::new(),
            chains: BTreeMap::new(),
            line: 0,
        }
    }

    /// Binds `chain` to the key `key_id` (its server's): a checkpoint of
    /// the chain signed by any other trusted key is refused, and so is a
    /// checkpoint of another chain signed by that key. Without a binding a
    /// chain is bound to the key of its first checkpoint.
    pub fn bind(&mut self, chain: &str, key_id: &str) {
        self.bound.insert(chain.to_owned(), key_id.to_owned());
    }

    /// A verifier trusting `keys`, each bound to its chain where one is
    /// named (see [`Verifier::bind`]).
    pub fn with_bound_keys(keys: Vec<(Option<String>, AuditPublicKey)>) -> Self {
        let mut v = Self::new(keys.iter().map(|(_, k)| k.clone()).collect());
        for (chain, key) in &keys {
            if let Some(c) = chain {
                v.bind(c, &key.id());
            }
        }
        v
    }

    fn err(&self, chain: &str, seq: Option<u64>, what: impl Into<String>) -> VerifyError {
        VerifyError {
            line: self.line,
            chain: chain.to_owned(),
            seq,
            what: what.into(),
        }
    }

    /// Checks the next line (empty lines are skipped).
    pub fn feed(&mut self, text: &str) -> Result<(), VerifyError> {
        self.line += 1;
        if text.trim().is_empty() {
            return Ok(());
        }
        match classify(text).map_err(|e| self.err("", None, e))? {
            Line::Checkpoint(c) => self.checkpoint(c),
            Line::Record {
                chain, seq, value, ..
            } => self.record(&chain, seq, value),
        }
    }

    fn checkpoint(&mut self, c: Checkpoint) -> Result<(), VerifyError> {
        let Some(key) = self.keys.iter().find(|k| k.id() == c.key) else {
            return Err(self.err(
                &c.chain,
                Some(c.seq),
                format!(
                    "checkpoint signed by key {}, which is not a trusted audit key",
                    c.key
                ),
            ));
        };
        if let Some(bound) = self.bound.get(&c.chain)
            && *bound != c.key
        {
            return Err(self.err(
                &c.chain,
                Some(c.seq),
                format!(
                    "checkpoint signed by key {}, but this chain is bound to key {bound}",
                    c.key
                ),
            ));
        }
        if let Some((other, _)) = self
            .bound
            .iter()
            .find(|(chain, k)| **k == c.key && **chain != c.chain)
        {
            return Err(self.err(
                &c.chain,
                Some(c.seq),
                format!(
                    "checkpoint signed by key {}, which belongs to chain {other}",
                    c.key
                ),
            ));
        }
        if !c.verify(key) {
            return Err(self.err(
                &c.chain,
                Some(c.seq),
                "checkpoint signature does not verify",
            ));
        }
        let Some(hash) = c.hash_bytes() else {
            return Err(self.err(
                &c.chain,
                Some(c.seq),
                "checkpoint hash is not 32 bytes of hex",
            ));
        };
        let line = self.line;
        match self.chains.get_mut(&c.chain) {
            None => {
                self.chains.insert(
                    c.chain.clone(),
                    State {
                        next_seq: c.seq + 1,
                        last_hash: hash,
                        key: c.key.clone(),
                        first_seq: 0,
                        records: 0,
                        checkpoints: 1,
                        pruned_through: c.pruned.then_some(c.seq),
                        uncovered: None,
                        gaps: 0,
                    },
                );
                Ok(())
            }
            Some(st) => {
                let fail = |what: String| VerifyError {
                    line,
                    chain: c.chain.clone(),
                    seq: Some(c.seq),
                    what,
                };
                if st.key.is_empty() {
                    st.key = c.key.clone();
                } else if st.key != c.key {
                    return Err(fail(format!(
                        "checkpoint signed by key {}, but this chain's key is {}",
                        c.key, st.key
                    )));
                }
                if c.seq + 1 != st.next_seq {
                    return Err(fail(format!(
                        "checkpoint out of place: the chain is at record {}",
                        st.next_seq - 1
                    )));
                }
                if hash != st.last_hash {
                    return Err(fail(
                        "checkpoint does not match the chain: records before it were changed"
                            .into(),
                    ));
                }
                st.checkpoints += 1;
                st.uncovered = None;
                if c.pruned {
                    st.pruned_through = Some(c.seq);
                }
                Ok(())
            }
        }
    }

    fn record(&mut self, chain: &str, seq: u64, mut value: Value) -> Result<(), VerifyError> {
        let hex32 = |v: Option<Value>| -> Option<[u8; 32]> {
            let raw = hex::decode(v?.as_str()?).ok()?;
            raw.try_into().ok()
        };
        let Value::Object(m) = &mut value else {
            return Err(self.err(chain, Some(seq), "not an object"));
        };
        let Some(hash) = hex32(m.remove("hash")) else {
            return Err(self.err(chain, Some(seq), "hash missing or not 32 bytes of hex"));
        };
        let Some(prev) = hex32(m.get("prev").cloned()) else {
            return Err(self.err(chain, Some(seq), "prev missing or not 32 bytes of hex"));
        };
        match hash_line(&prev, &value) {
            Ok(h) if h == hash => {}
            Ok(_) => {
                return Err(self.err(
                    chain,
                    Some(seq),
                    "hash does not match the record's contents (edited)",
                ));
            }
            Err(e) => return Err(self.err(chain, Some(seq), e.to_string())),
        }
        let line = self.line;
        let fail = |seq: u64, what: String| VerifyError {
            line,
            chain: chain.to_owned(),
            seq: Some(seq),
            what,
        };
        match self.chains.get_mut(chain) {
            None => {
                if seq != 1 || prev != GENESIS {
                    return Err(fail(
                        seq,
                        "the chain starts here without a signed checkpoint before it (records before it are missing)".into(),
                    ));
                }
                self.chains.insert(
                    chain.to_owned(),
                    State {
                        next_seq: 2,
                        last_hash: hash,
                        key: String::new(),
                        first_seq: 1,
                        records: 1,
                        checkpoints: 0,
                        pruned_through: None,
                        uncovered: Some(1),
                        gaps: u64::from(is_gap(&value)),
                    },
                );
                Ok(())
            }
            Some(st) => {
                if seq > st.next_seq {
                    return Err(fail(
                        st.next_seq,
                        format!(
                            "record missing (the next line is record {seq}): deleted or reordered"
                        ),
                    ));
                }
                if seq < st.next_seq {
                    return Err(fail(
                        seq,
                        format!(
                            "record appears again after record {}: inserted or reordered",
                            st.next_seq - 1
                        ),
                    ));
                }
                if prev != st.last_hash {
                    return Err(fail(
                        seq,
                        format!(
                            "prev does not match the hash of record {}: a record was inserted or changed",
                            seq - 1
                        ),
                    ));
                }
                if st.first_seq == 0 {
                    st.first_seq = seq;
                }
                st.next_seq = seq + 1;
                st.last_hash = hash;
                st.records += 1;
                st.gaps += u64::from(is_gap(&value));
                st.uncovered.get_or_insert(seq);
                Ok(())
            }
        }
    }

    /// The end of the input: every chain's last record must be covered by
    /// a checkpoint.
    pub fn finish(self) -> Result<Vec<ChainSummary>, VerifyError> {
        let mut out = vec![];
        for (chain, st) in self.chains {
            if let Some(from) = st.uncovered {
                return Err(VerifyError {
                    line: 0,
                    chain,
                    seq: Some(from),
                    what: format!(
                        "records {from} to {} are not covered by a signed checkpoint (cut off or appended?)",
                        st.next_seq - 1
                    ),
                });
            }
            out.push(ChainSummary {
                chain,
                key: st.key,
                first_seq: st.first_seq,
                last_seq: st.next_seq - 1,
                records: st.records,
                checkpoints: st.checkpoints,
                pruned_through: st.pruned_through,
                gaps: st.gaps,
            });
        }
        if out.is_empty() {
            return Err(VerifyError {
                line: 0,
                chain: String::new(),
                seq: None,
                what: "no audit records or checkpoints".into(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
