use super::*;
use crate::audit::{AuditKey, CHAIN_LINE, Event, Kind, seal};

const T: &str = "2026-12-03T10:00:00.000Z";

/// A chain of `n` records with a checkpoint after every `every` and at
/// the end.
fn chain(key: &AuditKey, name: &str, n: u64, every: u64) -> Vec<String> {
    let mut prev = GENESIS;
    let mut out = vec![];
    for seq in 1..=n {
        let mut e = Event::new(Kind::ToolDecision, T.into());
        e.tool = format!("tool{seq}");
        let s = seal(name, seq, &prev, &e).unwrap();
        out.push(s.line);
        prev = s.hash;
        if seq % every == 0 || seq == n {
            out.push(Checkpoint::sign(key, name, seq, &prev, T.into(), false).to_line());
        }
    }
    out
}

fn verify(keys: &[&AuditKey], lines: &[String]) -> Result<Vec<ChainSummary>, VerifyError> {
    let mut v = Verifier::new(keys.iter().map(|k| k.public()).collect());
    for l in lines {
        v.feed(l)?;
    }
    v.finish()
}

/// Index of record `seq` in the lines.
fn at(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| l.contains(&format!("\"seq\":{seq},")) && !l.starts_with("{\"checkpoint\""))
        .unwrap()
}

#[test]
fn an_intact_chain_verifies() {
    let (k, _) = AuditKey::generate().unwrap();
    let s = verify(&[&k], &chain(&k, "a", 25, 10)).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(
        (
            s[0].first_seq,
            s[0].last_seq,
            s[0].records,
            s[0].checkpoints
        ),
        (1, 25, 25, 3)
    );
}

#[test]
fn edit_delete_reorder_insert_are_named_by_sequence_number() {
    let (k, _) = AuditKey::generate().unwrap();
    let good = chain(&k, "a", 25, 10);

    let mut edited = good.clone();
    let i = at(&edited, 12);
    edited[i] = edited[i].replace("tool12", "tool99");
    let e = verify(&[&k], &edited).unwrap_err();
    assert_eq!(e.seq, Some(12), "{e}");
    assert!(e.what.contains("edited"), "{e}");

    let mut deleted = good.clone();
    deleted.remove(at(&good, 7));
    let e = verify(&[&k], &deleted).unwrap_err();
    assert_eq!(e.seq, Some(7), "{e}");

    let mut reordered = good.clone();
    reordered.swap(at(&good, 15), at(&good, 16));
    let e = verify(&[&k], &reordered).unwrap_err();
    assert_eq!(e.seq, Some(15), "{e}");

    // An inserted record with a valid hash of its own, linked to the
    // record before it.
    let mut inserted = good.clone();
    let i = at(&good, 5);
    let prev: [u8; 32] = hex::decode(
        serde_json::from_str::<Value>(&good[i]).unwrap()["hash"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
    .try_into()
    .unwrap();
    let mut e = Event::new(Kind::ToolDecision, T.into());
    e.tool = "forged".into();
    inserted.insert(i + 1, seal("a", 6, &prev, &e).unwrap().line);
    let err = verify(&[&k], &inserted).unwrap_err();
    assert_eq!(err.seq, Some(6), "{err}");

    // The forged record renumbered in with every later record re-sealed:
    // the next checkpoint catches it.
    let mut resealed = vec![];
    let mut prev = GENESIS;
    for seq in 1..=10u64 {
        let mut e = Event::new(Kind::ToolDecision, T.into());
        e.tool = if seq == 6 {
            "forged".into()
        } else {
            format!("tool{seq}")
        };
        let s = seal("a", seq, &prev, &e).unwrap();
        resealed.push(s.line);
        prev = s.hash;
    }
    resealed.push(good[at(&good, 10) + 1].clone());
    let err = verify(&[&k], &resealed).unwrap_err();
    assert_eq!(err.seq, Some(10), "{err}");
    assert!(err.what.contains("does not match the chain"), "{err}");

    // A cut-off tail is not covered by a signature.
    let cut = good[..at(&good, 23) + 1].to_vec();
    let err = verify(&[&k], &cut).unwrap_err();
    assert_eq!(err.seq, Some(21), "{err}");

    // The first record deleted.
    let err = verify(&[&k], &good[1..]).unwrap_err();
    assert_eq!(err.seq, Some(2), "{err}");
}

#[test]
fn checkpoints_of_another_key_are_refused() {
    let (k, _) = AuditKey::generate().unwrap();
    let (other, _) = AuditKey::generate().unwrap();
    let good = chain(&k, "a", 5, 10);
    // Re-signed by another key the verifier does not trust.
    let mut forged = good.clone();
    let last = forged.len() - 1;
    let c = Checkpoint::from_value(serde_json::from_str(&forged[last]).unwrap()).unwrap();
    forged[last] =
        Checkpoint::sign(&other, "a", c.seq, &c.hash_bytes().unwrap(), c.time, false).to_line();
    let e = verify(&[&k], &forged).unwrap_err();
    assert!(e.what.contains("not a trusted audit key"), "{e}");
    // Trusted, but not this chain's key.
    let mut mixed = chain(&k, "a", 12, 10);
    let last = mixed.len() - 1;
    let c = Checkpoint::from_value(serde_json::from_str(&mixed[last]).unwrap()).unwrap();
    mixed[last] =
        Checkpoint::sign(&other, "a", c.seq, &c.hash_bytes().unwrap(), c.time, false).to_line();
    let e = verify(&[&k, &other], &mixed).unwrap_err();
    assert!(e.what.contains("this chain's key"), "{e}");
    // A tampered signature.
    let mut bad = good.clone();
    let i = last_line(&bad);
    bad[i] = bad[i].replace("\"seq\":5", "\"seq\":4");
    assert!(verify(&[&k], &bad).is_err());
}

fn last_line(lines: &[String]) -> usize {
    lines.len() - 1
}

#[test]
fn a_pruned_or_windowed_chain_verifies_from_its_signed_anchor() {
    let (k, _) = AuditKey::generate().unwrap();
    let good = chain(&k, "a", 25, 10);
    // Drop records 1..=10 and put a pruned checkpoint for 10 first.
    let i = at(&good, 11);
    let c = Checkpoint::from_value(serde_json::from_str(&good[i - 1]).unwrap()).unwrap();
    let anchor = Checkpoint::sign(&k, "a", 10, &c.hash_bytes().unwrap(), T.into(), true);
    let mut pruned = vec![anchor.to_line()];
    pruned.extend_from_slice(&good[i..]);
    let s = verify(&[&k], &pruned).unwrap();
    assert_eq!(
        (s[0].first_seq, s[0].last_seq, s[0].pruned_through),
        (11, 25, Some(10))
    );
    // Without the anchor the start is refused.
    assert!(verify(&[&k], &good[i..]).is_err());
}

#[test]
fn interleaved_chains_are_checked_each_on_its_own() {
    let (k1, _) = AuditKey::generate().unwrap();
    let (k2, _) = AuditKey::generate().unwrap();
    let a = chain(&k1, "a", 5, 10);
    let b = chain(&k2, "b", 3, 10);
    let mut both: Vec<String> = a.iter().chain(b.iter()).cloned().collect();
    both.insert(2, "".into());
    let s = verify(&[&k1, &k2], &both).unwrap();
    assert_eq!(s.iter().map(|c| c.records).collect::<Vec<_>>(), vec![5, 3]);
    assert!(verify(&[&k1], &both).is_err());
    let e = verify(&[&k1], &["{nope".to_owned()]).unwrap_err();
    assert_eq!(e.line, 1);
}

#[test]
fn a_chain_bound_to_its_servers_key_refuses_another_trusted_key() {
    let (a, _) = AuditKey::generate().unwrap();
    let (b, _) = AuditKey::generate().unwrap();
    // Server b's key signs a chain in server a's name.
    let forged = chain(&b, "a", 5, 5);
    // Trusting both keys with no binding, the first checkpoint binds.
    assert!(verify(&[&a, &b], &forged).is_ok());
    // Bound as `audit key` prints them: refused, naming the key.
    let text = format!(
        "{CHAIN_LINE}a\n{}{CHAIN_LINE}b\n{}",
        a.public().to_pem(),
        b.public().to_pem()
    );
    let keys = crate::audit::parse_bound_public_keys(&text).unwrap();
    assert_eq!(keys[0].0.as_deref(), Some("a"));
    assert_eq!(keys[1].0.as_deref(), Some("b"));
    let mut v = Verifier::with_bound_keys(keys.clone());
    let err = forged
        .iter()
        .try_for_each(|l| v.feed(l))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bound to key"), "{err}");
    // Each server's own chain still verifies.
    let mut v = Verifier::with_bound_keys(keys);
    for l in chain(&a, "a", 5, 5).iter().chain(&chain(&b, "b", 3, 3)) {
        v.feed(l).unwrap();
    }
    assert_eq!(v.finish().unwrap().len(), 2);
}
