//! Credential providers across servers sharing one database: sealed with
//! the same key file, added through one server, released through another.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// A secret provider added through one server is seen and rotated through
/// the others; the shared database holds only its ciphertext.
pub(super) async fn a_secret_provider_is_shared_and_the_database_holds_only_ciphertext(f: &Fleet) {
    use lanyard_proto::admin::{
        AddCredentialRequest, CredentialProviderRequest, ListCredentialsRequest,
        RotateCredentialRequest,
    };
    let name = || "crm-api-key".to_owned();
    f.admin(0)
        .add_credential(AddCredentialRequest {
            name: name(),
            kind: "secret".into(),
            secret: b"sk-live-fleet-0123456789".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let seen = f
        .admin(1)
        .get_credential_provider(CredentialProviderRequest { name: name() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((seen.kind.as_str(), seen.version), ("secret", 1));
    let rotated = f
        .admin(2)
        .rotate_credential(RotateCredentialRequest {
            name: name(),
            secret: b"sk-live-fleet-rotated".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.version, 2);
    assert_ne!(rotated.digest, seen.digest);
    let listed = f
        .admin(0)
        .list_credentials(ListCredentialsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.providers[0].version, 2);
    let db = f.pg.client(&f.db).await.unwrap();
    let rows = db
        .query(
            "SELECT data::text FROM lanyard_docs WHERE kind = 'credential'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let row: String = rows[0].get(0);
    assert!(
        row.contains("ciphertext") && !row.contains("sk-live"),
        "{row}"
    );
}

/// A revealed secret added through a server the agent is not attached to
/// is released, inside a task, through the agent's own server (each
/// server opens it with the key file they share).
pub(super) async fn a_secret_added_through_one_server_is_released_through_another(
    f: &Fleet,
    agent: &lanyard_agent::Bound,
    home: usize,
) {
    use lanyard_proto::admin::{AddCredentialRequest, CreateEntryRequest};
    use lanyard_proto::broker::GetCredentialRequest;
    use lanyard_proto::broker::credential_broker_client::CredentialBrokerClient;
    use lanyard_proto::task::BeginTaskRequest;
    use lanyard_proto::task::task_identity_client::TaskIdentityClient;
    let other = (home + 1) % 3;
    let id = "spiffe://example.org/credentials";
    f.admin(other)
        .add_credential(AddCredentialRequest {
            name: "shared-key".into(),
            kind: "secret".into(),
            secret: b"sk-shared-across-servers".to_vec(),
            reveal: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut entry = entry_req(id);
    if let Some(e) = entry.entry.as_mut() {
        e.task_limits = Some(lanyard_proto::types::TaskLimits {
            allowed_task_types: vec!["*".into()],
            allowed_tools: vec!["*".into()],
            max_task_ttl_seconds: 600,
            allowed_credentials: vec!["shared-key".into()],
            ..Default::default()
        });
    }
    let created = f
        .admin(other)
        .create_entry(CreateEntryRequest { entry: entry.entry })
        .await
        .unwrap()
        .into_inner();
    let chan = || lanyard_uds::unix_channel(&agent.socket).unwrap();
    let task = eventually(
        "a task under the new entry",
        Duration::from_secs(10),
        || async {
            TaskIdentityClient::new(chan())
                .begin_task(header(BeginTaskRequest {
                    spiffe_id: id.into(),
                    task_type: "fleet.check".into(),
                    ttl_seconds: 60,
                    ..Default::default()
                }))
                .await
                .ok()
        },
    )
    .await
    .into_inner();
    let c = CredentialBrokerClient::new(chan())
        .get_credential(header(GetCredentialRequest {
            name: "shared-key".into(),
            task_id: task.task_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.credential, "sk-shared-across-servers");
    assert_eq!(c.task_id, task.task_id);
    // The later steps count the agent's SVIDs: this entry goes.
    f.admin(home)
        .delete_entry(lanyard_proto::admin::DeleteEntryRequest { id: created.id })
        .await
        .unwrap();
}
