//! The Workload API's limits and the `[quarantine]` and `[audit]` tables.

/// Resource limits of the Workload API: every one configurable, so a load
/// tool can raise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most open connections in total (kept below the descriptor limit).
    pub max_connections: usize,
    /// `max_connections` was not configured: it may be lowered to fit the
    /// descriptor limit of the machine it starts on.
    pub max_connections_default: bool,
    /// Most open connections per caller.
    pub max_connections_per_caller: usize,
    /// Most concurrent streams per connection.
    pub max_streams_per_connection: u32,
    /// Deadline of the HTTP/2 preface, frame headers and header blocks.
    pub header_timeout: std::time::Duration,
    /// Most bytes held for incomplete frames and header blocks.
    pub max_buffered_header_bytes: usize,
    /// Largest executable hashed for `unix:sha256`.
    pub max_hash_bytes: u64,
    /// Bytes of JWT-SVIDs cached.
    pub jwt_cache_bytes: usize,
    /// JWT-SVID signings per caller per second.
    pub jwt_signings_per_caller_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            max_connections_default: true,
            max_connections_per_caller: 256,
            max_streams_per_connection: 128,
            header_timeout: lanyard_uds::shim::DEFAULT_HEADER_TIMEOUT,
            max_buffered_header_bytes: lanyard_uds::shim::DEFAULT_BUFFER_BUDGET,
            max_hash_bytes: crate::attestor::DEFAULT_MAX_HASH_BYTES,
            jwt_cache_bytes: 16 << 20,
            jwt_signings_per_caller_per_second: 20,
        }
    }
}

/// The `[quarantine]` table.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuarantine {
    /// Send SIGSTOP to a quarantined process (default false).
    pub freeze: Option<bool>,
    /// More denied tool calls than this by one workload, within `window`, at
    /// this node's enforcement points quarantine it here at once (default 3).
    pub max_denials: Option<u32>,
    /// The window of `max_denials` (default 60s).
    pub window: Option<String>,
}

/// The `[workload_api]` table.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkloadApi {
    /// Serve the WIT-SVID profile (`FetchWITSVID`, `FetchWITBundles`);
    /// off by default, when both answer Unimplemented.
    pub wit: Option<bool>,
}

/// The `[audit]` table.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Most bytes of records waiting for the server; when full, tool-call
    /// decisions are denied ("audit unavailable") (default 1 GiB).
    pub max_queue_bytes: Option<u64>,
    /// How often queued records are synced to disk (default 5ms).
    pub sync_interval: Option<String>,
}

/// Quarantine settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuarantineSettings {
    /// SIGSTOP quarantined processes.
    pub freeze: bool,
    /// The local denial trigger.
    pub trigger: crate::pdp::LocalTrigger,
}
