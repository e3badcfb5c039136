//! Task claims as carried by task SVIDs: one non-critical X.509 extension
//! (DER, layout below) and the task claims of a JWT-SVID. Peers decode them
//! with [`TaskClaims::from_x509`] and [`TaskClaims::from_jwt_claims`].
//!
//! ```text
//! TaskClaims ::= SEQUENCE {
//!   version          INTEGER (1),
//!   taskId           UTF8String,
//!   taskType         UTF8String,
//!   tools            SEQUENCE OF UTF8String,
//!   dataSensitivity  UTF8String,
//!   grantDigest      OCTET STRING,      -- SHA-256 of the RFC 8785 grant
//!   onBehalfOf   [0] IMPLICIT UTF8String OPTIONAL,
//!   taskNotAfter [1] IMPLICIT GeneralizedTime OPTIONAL,
//!   parentTaskId [2] IMPLICIT UTF8String OPTIONAL,
//!   destinations [3] IMPLICIT SEQUENCE OF UTF8String OPTIONAL }
//!                                       -- absent when none were declared
//! ```

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::names::{TaskError, TaskId};
use crate::clock::{from_unix_secs, unix_secs};
use crate::der::{self, Reader};

/// The extension's OID in dotted form (a UUID arc under `2.25`).
pub const TASK_CLAIMS_OID: &str = "2.25.187691679452939855309652420807227979439";
const OID_UUID_ARC: u128 = 187_691_679_452_939_855_309_652_420_807_227_979_439;

const TAG_ON_BEHALF_OF: u8 = 0x80;
const TAG_NOT_AFTER: u8 = 0x81;
const TAG_PARENT: u8 = 0x82;
const TAG_DESTINATIONS: u8 = 0xa3;
/// Largest extension accepted when decoding.
const MAX_EXTENSION_LEN: usize = 16 * 1024;

/// The content octets of the extension's OID (without tag and length).
pub fn task_claims_oid_der() -> Vec<u8> {
    let mut arc = Vec::new();
    let mut v = OID_UUID_ARC;
    arc.push((v & 0x7f) as u8);
    v >>= 7;
    while v > 0 {
        arc.push(0x80 | (v & 0x7f) as u8);
        v >>= 7;
    }
    arc.reverse();
    let mut out = vec![2 * 40 + 25];
    out.extend(arc);
    out
}

/// The claims of one task SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskClaims {
    /// The task.
    pub task_id: TaskId,
    /// Its type, e.g. `report.generate`.
    pub task_type: String,
    /// The granted tools, sorted.
    pub tools: Vec<String>,
    /// The granted data sensitivity level.
    pub data_sensitivity: String,
    /// SHA-256 of the RFC 8785 JSON of the whole grant.
    pub grant_digest: [u8; 32],
    /// The principal the task acts for.
    pub on_behalf_of: Option<String>,
    /// When the task ends (whole seconds).
    pub not_after: Option<SystemTime>,
    /// The task this one was delegated from.
    pub parent_task_id: Option<TaskId>,
    /// The hosts, URLs or services the task declared it will reach (empty:
    /// none declared).
    pub destinations: Vec<String>,
}

impl TaskClaims {
    /// The extension's DER content (the `extnValue` octets).
    pub fn to_der(&self) -> Vec<u8> {
        let mut body = Vec::new();
        der::write(&mut body, der::INTEGER, &[1]);
        der::write(
            &mut body,
            der::UTF8_STRING,
            self.task_id.as_str().as_bytes(),
        );
        der::write(&mut body, der::UTF8_STRING, self.task_type.as_bytes());
        let mut tools = Vec::new();
        for t in &self.tools {
            der::write(&mut tools, der::UTF8_STRING, t.as_bytes());
        }
        der::write(&mut body, der::SEQUENCE, &tools);
        der::write(
            &mut body,
            der::UTF8_STRING,
            self.data_sensitivity.as_bytes(),
        );
        der::write(&mut body, der::OCTET_STRING, &self.grant_digest);
        if let Some(obo) = &self.on_behalf_of {
            der::write(&mut body, TAG_ON_BEHALF_OF, obo.as_bytes());
        }
        if let Some(t) = self.not_after {
            der::write(&mut body, TAG_NOT_AFTER, generalized_time(t).as_bytes());
        }
        if let Some(p) = &self.parent_task_id {
            der::write(&mut body, TAG_PARENT, p.as_str().as_bytes());
        }
        if !self.destinations.is_empty() {
            let mut d = Vec::new();
            for x in &self.destinations {
                der::write(&mut d, der::UTF8_STRING, x.as_bytes());
            }
            der::write(&mut body, TAG_DESTINATIONS, &d);
        }
        let mut out = Vec::new();
        der::write(&mut out, der::SEQUENCE, &body);
        out
    }

    /// Decodes the extension's DER content.
    pub fn from_der(bytes: &[u8]) -> Result<Self, TaskError> {
        Self::decode(bytes).map_err(TaskError::Malformed)
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_EXTENSION_LEN {
            return Err("extension too large".into());
        }
        let mut outer = Reader::new(bytes);
        let mut r = Reader::new(outer.read(der::SEQUENCE)?);
        if !outer.is_empty() {
            return Err("trailing bytes".into());
        }
        if r.read(der::INTEGER)? != [1] {
            return Err("unsupported version".into());
        }
        let task_id = TaskId::new(r.read_utf8(der::UTF8_STRING)?).map_err(|e| e.to_string())?;
        let task_type = r.read_utf8(der::UTF8_STRING)?.to_owned();
        let mut tr = Reader::new(r.read(der::SEQUENCE)?);
        let mut tools = Vec::new();
        while !tr.is_empty() {
            tools.push(tr.read_utf8(der::UTF8_STRING)?.to_owned());
        }
        let data_sensitivity = r.read_utf8(der::UTF8_STRING)?.to_owned();
        let grant_digest: [u8; 32] = r
            .read(der::OCTET_STRING)?
            .try_into()
            .map_err(|_| "grant digest is not 32 bytes")?;
        let mut claims = Self {
            task_id,
            task_type,
            tools,
            data_sensitivity,
            grant_digest,
            on_behalf_of: None,
            not_after: None,
            parent_task_id: None,
            destinations: vec![],
        };
        if r.peek_tag() == Some(TAG_ON_BEHALF_OF) {
            claims.on_behalf_of = Some(r.read_utf8(TAG_ON_BEHALF_OF)?.to_owned());
        }
        if r.peek_tag() == Some(TAG_NOT_AFTER) {
            claims.not_after = Some(parse_generalized_time(r.read_utf8(TAG_NOT_AFTER)?)?);
        }
        if r.peek_tag() == Some(TAG_PARENT) {
            claims.parent_task_id =
                Some(TaskId::new(r.read_utf8(TAG_PARENT)?).map_err(|e| e.to_string())?);
        }
        if r.peek_tag() == Some(TAG_DESTINATIONS) {
            let mut dr = Reader::new(r.read(TAG_DESTINATIONS)?);
            while !dr.is_empty() {
                claims
                    .destinations
                    .push(dr.read_utf8(der::UTF8_STRING)?.to_owned());
            }
        }
        if !r.is_empty() {
            return Err("unexpected trailing fields".into());
        }
        Ok(claims)
    }

    /// The task claims of an X.509 certificate (DER): `Ok(None)` when it has
    /// no task claims extension, an error when the certificate or the
    /// extension does not decode or the extension is marked critical.
    pub fn from_x509(cert_der: &[u8]) -> Result<Option<Self>, TaskError> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| TaskError::Malformed(format!("certificate: {e}")))?;
        let oid = task_claims_oid_der();
        let mut found = cert
            .extensions()
            .iter()
            .filter(|e| e.oid.as_bytes() == oid.as_slice());
        let Some(ext) = found.next() else {
            return Ok(None);
        };
        if found.next().is_some() {
            return Err(TaskError::Malformed("extension appears twice".into()));
        }
        if ext.critical {
            return Err(TaskError::Malformed(
                "extension must not be critical".into(),
            ));
        }
        Self::from_der(ext.value).map(Some)
    }

    /// The task claims of a JWT-SVID's claim set: `Ok(None)` when it has no
    /// `txn` claim (not a task JWT).
    pub fn from_jwt_claims(claims: &Map<String, Value>) -> Result<Option<Self>, TaskError> {
        let Some(txn) = claims.get("txn") else {
            return Ok(None);
        };
        let bad = |what: &str| TaskError::Malformed(format!("JWT claim {what}"));
        let task_id = TaskId::new(txn.as_str().ok_or_else(|| bad("txn"))?)?;
        let task_type = claims
            .get("scope")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("scope"))?
            .to_owned();
        let tctx = claims
            .get("tctx")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("tctx"))?;
        let tools = tctx
            .get("tools")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("tctx.tools"))?
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("tctx.tools"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let data_sensitivity = tctx
            .get("data_sensitivity")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("tctx.data_sensitivity"))?
            .to_owned();
        let grant_digest: [u8; 32] = tctx
            .get("grant_sha256")
            .and_then(Value::as_str)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("tctx.grant_sha256"))?;
        let on_behalf_of = match tctx.get("on_behalf_of") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| bad("tctx.on_behalf_of"))?
                    .to_owned(),
            ),
        };
        let not_after = match tctx.get("task_exp") {
            None => None,
            Some(v) => Some(from_unix_secs(
                v.as_u64().ok_or_else(|| bad("tctx.task_exp"))?,
            )),
        };
        let destinations = match tctx.get("destinations") {
            None => vec![],
            Some(v) => v
                .as_array()
                .ok_or_else(|| bad("tctx.destinations"))?
                .iter()
                .map(|d| {
                    d.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad("tctx.destinations"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let parent_task_id = match claims.get("act") {
            None => None,
            Some(act) => Some(TaskId::new(
                act.get("txn")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("act.txn"))?,
            )?),
        };
        Ok(Some(Self {
            task_id,
            task_type,
            tools,
            data_sensitivity,
            grant_digest,
            on_behalf_of,
            not_after,
            parent_task_id,
            destinations,
        }))
    }

    /// The `tctx` members these claims determine (the grant adds the
    /// intent digest).
    pub(crate) fn tctx_base(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("tools".into(), json!(self.tools));
        m.insert("destinations".into(), json!(self.destinations));
        m.insert("data_sensitivity".into(), json!(self.data_sensitivity));
        m.insert("grant_sha256".into(), json!(hex::encode(self.grant_digest)));
        if let Some(obo) = &self.on_behalf_of {
            m.insert("on_behalf_of".into(), json!(obo));
        }
        if let Some(t) = self.not_after {
            m.insert("task_exp".into(), json!(unix_secs(t)));
        }
        m
    }
}

fn generalized_time(t: SystemTime) -> String {
    let secs = i64::try_from(unix_secs(t)).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(d) => format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => "99991231235959Z".into(),
    }
}

fn parse_generalized_time(s: &str) -> Result<SystemTime, String> {
    let bad = || format!("bad GeneralizedTime {s:?}");
    let digits = s.strip_suffix('Z').ok_or_else(bad)?;
    if digits.len() != 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| digits[r].parse::<u32>().map_err(|_| bad());
    let month =
        time::Month::try_from(u8::try_from(n(4..6)?).map_err(|_| bad())?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(
        i32::try_from(n(0..4)?).map_err(|_| bad())?,
        month,
        u8::try_from(n(6..8)?).map_err(|_| bad())?,
    )
    .map_err(|_| bad())?;
    let t = time::Time::from_hms(
        u8::try_from(n(8..10)?).map_err(|_| bad())?,
        u8::try_from(n(10..12)?).map_err(|_| bad())?,
        u8::try_from(n(12..14)?).map_err(|_| bad())?,
    )
    .map_err(|_| bad())?;
    let ts = date.with_time(t).assume_utc().unix_timestamp();
    Ok(from_unix_secs(u64::try_from(ts).map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> TaskClaims {
        TaskClaims {
            task_id: TaskId::new("00112233445566778899aabbccddeeff").unwrap(),
            task_type: "report.generate".into(),
            tools: vec!["crm.read".into(), "email.send".into()],
            data_sensitivity: "confidential".into(),
            grant_digest: [7; 32],
            on_behalf_of: Some("user:alice@example.com".into()),
            not_after: Some(from_unix_secs(1_800_000_000)),
            parent_task_id: Some(TaskId::new("ffeeddccbbaa99887766554433221100").unwrap()),
            destinations: vec!["crm.example.com".into(), "https://mail.example.com/".into()],
        }
    }

    #[test]
    fn oid_encoding() {
        let oid = task_claims_oid_der();
        assert_eq!(oid.len(), 20);
        assert_eq!(oid[0], 0x69);
        let arc = oid[1..]
            .iter()
            .fold(0u128, |acc, b| (acc << 7) | u128::from(b & 0x7f));
        assert_eq!(format!("2.25.{arc}"), TASK_CLAIMS_OID);
        assert!(oid[1..19].iter().all(|b| b & 0x80 != 0) && oid[19] & 0x80 == 0);
    }

    #[test]
    fn der_vector_and_round_trip() {
        let c = sample();
        let der = c.to_der();
        assert_eq!(TaskClaims::from_der(&der).unwrap(), c);
        // A fixed vector: the minimal claims (no optional fields).
        let min = TaskClaims {
            on_behalf_of: None,
            not_after: None,
            parent_task_id: None,
            destinations: vec![],
            tools: vec!["a".into()],
            task_type: "t".into(),
            data_sensitivity: "public".into(),
            grant_digest: [0; 32],
            ..c.clone()
        };
        let hex_der = hex::encode(min.to_der());
        assert_eq!(
            hex_der,
            concat!(
                "3057",
                "020101",
                "0c203030313132323333343435353636373738383939616162626363646465656666",
                "0c0174",
                "30030c0161",
                "0c067075626c6963",
                "0420",
                "0000000000000000000000000000000000000000000000000000000000000000"
            )
        );
        assert!(hex::encode(c.to_der()).contains(&hex::encode("20270115080000Z")));
        assert_eq!(
            parse_generalized_time("20270115080000Z").unwrap(),
            from_unix_secs(1_800_000_000)
        );
    }

    #[test]
    fn malformed_extensions_are_refused() {
        let der = sample().to_der();
        for cut in 0..der.len() {
            assert!(TaskClaims::from_der(&der[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = der.clone();
        extra.push(0);
        assert!(TaskClaims::from_der(&extra).is_err());
        assert!(parse_generalized_time("20271315080000Z").is_err());
        assert!(parse_generalized_time("2027011508000Z").is_err());
    }
}
