//! Task claims from untrusted peers and the task messages at the proto
//! boundary: the X.509 extension decoder accepts only strict DER (what it
//! accepts re-encodes to the same bytes), JWT claim sets never panic and
//! round-trip, and a task message that converts converts back unchanged.
#![no_main]
use lanyard_core::TaskClaims;
use lanyard_core::task::TaskRecord;
use lanyard_proto::types;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = TaskClaims::from_der(data) {
        let again = c.to_der();
        assert_eq!(again, data, "accepted DER re-encodes identically");
    }
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = TaskClaims::from_jwt_claims(&m);
    }
    if let Ok(msg) = types::TaskInfo::decode(data)
        && let Ok(record) = TaskRecord::try_from(msg)
    {
        let back = types::TaskInfo::from(&record);
        let again = TaskRecord::try_from(back).expect("a converted task converts back");
        assert_eq!(again, record);
    }
    if let Ok(spec) = types::TaskSpec::decode(data)
        && let Ok(req) = lanyard_proto::convert::task_request(spec)
    {
        let back = types::TaskSpec::from(&req);
        assert_eq!(lanyard_proto::convert::task_request(back).ok(), Some(req));
    }
});
