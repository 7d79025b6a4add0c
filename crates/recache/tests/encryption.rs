//! Data protection (issue 26), first step: the keyring on both metadata
//! engines. A tenant's data key is made on first use and stored only wrapped
//! by the master key; a second replica opens what the first sealed; a
//! tenant's rotation keeps old blobs readable; a master rotation re-wraps
//! every key, after which the old master key is no longer needed; erasing a
//! tenant makes its blobs unreadable everywhere and leaves others alone.

mod common;

use bytes::Bytes;
use common::{Backends, Env};
use recache::roles::keyring::{open_artifact, Keyring, KeyringError};
use recache::seal::{self, Key32};
use recache_stub_provider::StubConfig;

on_both_backends!(keyring_seals_rotates_and_erases);

async fn keyring_seals_rotates_and_erases(b: Backends) {
    let env = Env::on(b, StubConfig::default(), "").await;
    let (meta, _) = recache::roles::factory::open_metadata(&env.config()).await.unwrap();
    let (m1, m2) = (Key32::random(), Key32::random());
    let ring = Keyring::new(vec![m1.clone()], meta.clone()).unwrap();
    let plain = Bytes::from_static(b"RCA1 the prompt and the answer");
    let sealed = ring.seal("team-a", &plain).await.unwrap();
    assert!(seal::is_sealed(&sealed));
    assert!(
        !sealed.windows(10).any(|w| w == b"the prompt"),
        "no plain text in a sealed blob"
    );
    assert_eq!(ring.open(&sealed).await.unwrap(), plain);
    let other_tenant = ring.seal("team-b", b"team b's answer").await.unwrap();

    // Stored wrapped by the master key, one active key per tenant.
    let recs = meta.list_data_keys(Some("team-a".into())).await.unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(seal::wrapped_by(&recs[0].wrapped).unwrap(), m1.fingerprint());
    assert_eq!(recs[0].master_id, m1.fingerprint());

    // Another replica, nothing in memory: opens it through metadata.
    let replica = Keyring::new(vec![m1.clone()], meta.clone()).unwrap();
    assert_eq!(replica.open(&sealed).await.unwrap(), plain);

    // A tenant's rotation: new writes under a new key, old blobs still open.
    let (new_id, _) = ring.make_key("team-a", true).await.unwrap();
    let sealed2 = ring.seal("team-a", &plain).await.unwrap();
    assert_eq!(seal::key_id_of(&sealed2).unwrap(), new_id);
    assert_ne!(seal::key_id_of(&sealed).unwrap(), new_id);
    assert_eq!(ring.open(&sealed).await.unwrap(), plain);
    let recs = meta.list_data_keys(Some("team-a".into())).await.unwrap();
    assert_eq!(recs.iter().filter(|r| r.active()).count(), 1, "{recs:?}");

    // A master rotation: the new key first, the old one accepted meanwhile.
    let rotating = Keyring::new(vec![m2.clone(), m1.clone()], meta.clone()).unwrap();
    let (rewrapped, _) = rotating.rewrap_all().await.unwrap();
    assert_eq!(rewrapped, 3, "team-a's two keys and team-b's");
    assert_eq!(rotating.rewrap_all().await.unwrap(), (0, 3), "done once");
    let only_new = Keyring::new(vec![m2.clone()], meta.clone()).unwrap();
    assert_eq!(only_new.open(&sealed).await.unwrap(), plain);
    assert_eq!(only_new.open(&sealed2).await.unwrap(), plain);
    let only_old = Keyring::new(vec![m1.clone()], meta.clone()).unwrap();
    assert!(
        only_old.open(&sealed).await.is_err(),
        "the old master key no longer opens the keys"
    );

    // Erasure: team-a's keys destroyed, its blobs unreadable; team-b untouched.
    assert_eq!(only_new.destroy_tenant("team-a").await.unwrap(), 2);
    let fresh = Keyring::new(vec![m2.clone()], meta.clone()).unwrap();
    assert!(matches!(fresh.open(&sealed).await, Err(KeyringError::Destroyed(_))));
    assert!(
        matches!(only_new.open(&sealed2).await, Err(KeyringError::Destroyed(_))),
        "forgotten in memory too"
    );
    assert_eq!(&fresh.open(&other_tenant).await.unwrap()[..], b"team b's answer");
    let gone = meta.list_data_keys(Some("team-a".into())).await.unwrap();
    assert!(gone.iter().all(|r| r.wrapped.is_empty()), "no wrapped key is kept");
    // A new write for the erased tenant gets a new key.
    let after = fresh.seal("team-a", b"a new answer").await.unwrap();
    assert_eq!(&fresh.open(&after).await.unwrap()[..], b"a new answer");

    // Without a keyring: a plain artifact reads as it is; a sealed one says what is missing.
    assert_eq!(open_artifact(None, &plain).await.unwrap(), plain);
    let e = open_artifact(None, &other_tenant).await.unwrap_err().to_string();
    assert!(e.contains("no master key"), "{e}");
}
