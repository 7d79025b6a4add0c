use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;

use super::format::{self, HEADER};
use super::*;

fn small() -> SegmentOptions {
    SegmentOptions {
        segment_bytes: 4096,
        max_item_bytes: 1024,
        compact_ratio: 0.5,
    }
}

fn body(i: usize) -> (ArtifactId, Bytes) {
    let b = Bytes::from(format!("answer number {i} {}", "x".repeat(i % 200)));
    (ArtifactId::of(&b), b)
}

fn own(dir: &Path, opts: SegmentOptions) -> SegmentArtifacts {
    SegmentArtifacts::open_with(dir, "", opts, Access::Own, false).unwrap()
}

fn read(dir: &Path, opts: SegmentOptions) -> SegmentArtifacts {
    SegmentArtifacts::open_with(dir, "", opts, Access::Read, false).unwrap()
}

/// Every one of `items` reads back whole.
async fn reads_back(store: &SegmentArtifacts, items: &[(ArtifactId, Bytes)]) {
    for (id, b) in items {
        assert_eq!(store.get(*id).await.unwrap().as_ref(), Some(b), "{}", id.hex());
    }
}

async fn ids(store: &SegmentArtifacts) -> HashSet<ArtifactId> {
    store.list().await.unwrap().into_iter().map(|a| a.id).collect()
}

#[tokio::test]
async fn appends_survive_reopening_and_seal_full_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = own(dir.path(), small());
    let items: Vec<_> = (0..200).map(body).collect();
    for chunk in items.chunks(7) {
        store.put_many(chunk.to_vec()).await.unwrap();
    }
    store.put_many(items[..5].to_vec()).await.unwrap(); // stored already: no new records
    let stats = store.stats();
    assert_eq!(stats.artifacts, 200);
    assert!(stats.segments > 5, "4 KiB segments: {stats:?}");
    assert_eq!(stats.dead_bytes, 0, "re-putting stored content adds nothing: {stats:?}");
    drop(store);
    let idx = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "idx"))
        .count();
    assert!(idx as u64 >= stats.segments - 1, "sealed segments have an index: {idx}");
    let store = own(dir.path(), small());
    assert_eq!(store.stats(), stats, "the same view after reopening");
    reads_back(&store, &items).await;
}

#[tokio::test]
async fn deletes_are_tombstones_that_hold_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = own(dir.path(), small());
    let items: Vec<_> = (0..60).map(body).collect();
    store.put_many(items.clone()).await.unwrap();
    for (id, _) in &items[..30] {
        assert!(store.delete(*id).await.unwrap());
        assert!(!store.delete(*id).await.unwrap(), "a second delete finds nothing");
    }
    // Put one back: it is live again, though a tombstone names its old place.
    store.put(items[0].0, items[0].1.clone()).await.unwrap();
    drop(store);
    let store = own(dir.path(), small());
    let want: HashSet<_> = items[30..].iter().map(|(id, _)| *id).chain([items[0].0]).collect();
    assert_eq!(ids(&store).await, want);
    assert_eq!(store.get(items[1].0).await.unwrap(), None);
    assert_eq!(store.get(items[0].0).await.unwrap(), Some(items[0].1.clone()));
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_a_damaged_header_loses_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SegmentOptions {
        segment_bytes: 1 << 20,
        ..small()
    };
    let store = own(dir.path(), opts);
    let items: Vec<_> = (0..5).map(body).collect();
    for it in &items {
        store.put(it.0, it.1.clone()).await.unwrap();
    }
    let (path, second, _) = store.locate(items[1].0).unwrap();
    drop(store);
    // Damage the second record's header, and leave half a record at the end.
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    f.write_all_at(b"Z", second - HEADER as u64 + 30).unwrap();
    let good_len = f.metadata().unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    let torn = format::Header {
        kind: format::Kind::Artifact,
        len: 500,
        target: 0,
        written_ms: 1,
        id: ArtifactId([7; 32]),
    };
    f.write_all(&torn.encode()).unwrap();
    f.write_all(b"only part of the payload").unwrap();
    drop(f);

    let store = own(dir.path(), opts);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        good_len,
        "the torn tail is cut"
    );
    let got = ids(&store).await;
    let want: HashSet<_> = [0, 2, 3, 4].iter().map(|i| items[*i].0).collect();
    assert_eq!(got, want, "only the damaged record is lost");
    // Appends go on after the cut.
    let extra = body(99);
    store.put(extra.0, extra.1.clone()).await.unwrap();
    drop(store);
    let store = own(dir.path(), opts);
    assert_eq!(store.get(extra.0).await.unwrap(), Some(extra.1));
    assert_eq!(store.get(items[4].0).await.unwrap(), Some(items[4].1.clone()));
}

#[tokio::test]
async fn a_corrupt_payload_byte_is_returned_for_the_hash_check_to_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let store = own(dir.path(), small());
    let (id, b) = body(3);
    store.put(id, b).await.unwrap();
    let (path, off, len) = store.locate(id).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"#", off + u64::from(len) / 2).unwrap();
    let back = store.get(id).await.unwrap().expect("the bytes are there");
    assert_ne!(ArtifactId::of(&back), id, "the damage shows in the hash");
}

#[tokio::test]
async fn compaction_keeps_the_live_and_drops_the_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = own(dir.path(), small());
    let items: Vec<_> = (0..300).map(body).collect();
    store.put_many(items.clone()).await.unwrap();
    for (id, _) in items.iter().filter(|(id, _)| id.0[0] % 4 != 0) {
        store.delete(*id).await.unwrap();
    }
    let before = store.stats();
    let disk = |d: &Path| -> u64 {
        std::fs::read_dir(d.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let disk_before = disk(dir.path());
    let done = store.compact_now(false).await.unwrap();
    assert!(done.segments > 0 && done.reclaimed_bytes > 0, "{done:?}");
    let after = store.stats();
    assert_eq!(after.artifacts, before.artifacts);
    assert!(after.dead_bytes < before.dead_bytes, "{before:?} -> {after:?}");
    assert!(disk(dir.path()) < disk_before);
    let live: HashSet<_> = items
        .iter()
        .filter(|(id, _)| id.0[0] % 4 == 0)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ids(&store).await, live);
    for (id, b) in &items {
        let want = live.contains(id).then(|| b.clone());
        assert_eq!(store.get(*id).await.unwrap(), want);
    }
    // Everything deleted is gone from the disk once all is reclaimed.
    store.reclaim().await.unwrap();
    assert_eq!(store.stats().dead_bytes, 0, "{:?}", store.stats());
    drop(store);
    let store = own(dir.path(), small());
    assert_eq!(ids(&store).await, live, "no deleted answer comes back at reopening");
    let needle = items.iter().find(|(id, _)| !live.contains(id)).unwrap();
    for e in std::fs::read_dir(dir.path().join("segments")).unwrap() {
        let raw = std::fs::read(e.unwrap().path()).unwrap();
        assert!(
            !raw.windows(needle.1.len()).any(|w| w == &needle.1[..]),
            "deleted bytes remain"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_under_traffic_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(own(dir.path(), small()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..3usize {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            for i in 0..400 {
                let it = body(t * 10_000 + i);
                store.put(it.0, it.1.clone()).await.unwrap();
                if i % 3 == 0 {
                    kept.push(it);
                } else {
                    assert!(store.delete(it.0).await.unwrap());
                }
                // What this writer keeps reads back whole at every moment.
                let (id, b) = &kept[i % kept.len()];
                assert_eq!(
                    store.get(*id).await.unwrap().as_ref(),
                    Some(b),
                    "lost during compaction"
                );
            }
            kept
        }));
    }
    let compactor = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut done = CompactStats::default();
            while !stop.load(Ordering::Relaxed) {
                let s = store.compact_now(false).await.unwrap();
                done.segments += s.segments;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            done
        })
    };
    let mut kept = Vec::new();
    for w in writers {
        kept.extend(w.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let done = compactor.await.unwrap();
    assert!(done.segments > 10, "compaction ran during the traffic: {done:?}");
    let want: HashSet<_> = kept.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids(&store).await, want);
    drop(store);
    let store = own(dir.path(), small());
    assert_eq!(ids(&store).await, want, "and after reopening");
    reads_back(&store, &kept).await;
}

#[tokio::test]
async fn a_reader_follows_the_owner_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let owner = own(dir.path(), small());
    let a = body(1);
    owner.put(a.0, a.1.clone()).await.unwrap();
    let reader = read(dir.path(), small());
    assert!(!reader.is_owner());
    assert_eq!(reader.get(a.0).await.unwrap(), Some(a.1.clone()));
    // New appends, across sealed segments, are found.
    let more: Vec<_> = (2..100).map(body).collect();
    owner.put_many(more.clone()).await.unwrap();
    assert_eq!(reader.get(more[97].0).await.unwrap(), Some(more[97].1.clone()));
    // Deletes and compaction show.
    for (id, _) in &more[..90] {
        owner.delete(*id).await.unwrap();
    }
    owner.reclaim().await.unwrap();
    let want: HashSet<_> = [a.0].into_iter().chain(more[90..].iter().map(|(id, _)| *id)).collect();
    assert_eq!(ids(&reader).await, want);
    assert_eq!(reader.get(more[95].0).await.unwrap(), Some(more[95].1.clone()));
    assert!(matches!(
        reader.put(a.0, a.1.clone()).await,
        Err(BackendError::NotSupported { .. })
    ));
    assert!(reader.delete(a.0).await.is_err());
    // A second owner is refused, naming the owner.
    let e = SegmentArtifacts::open_with(dir.path(), "", small(), Access::Own, false)
        .err()
        .expect("one owner");
    assert!(e.to_string().contains("in use by another recache process"), "{e}");
}

#[tokio::test]
async fn large_artifacts_are_files_and_old_files_still_read() {
    let dir = tempfile::tempdir().unwrap();
    // A file written before segments, as the one-file store laid it out.
    let old = Bytes::from_static(b"an answer from before segments");
    let old_id = ArtifactId::of(&old);
    let hex = old_id.hex();
    let p = dir.path().join("sha256").join(&hex[..2]);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(&hex), &old).unwrap();
    let store = own(dir.path(), small());
    let big = Bytes::from(vec![42u8; 5000]);
    let big_id = ArtifactId::of(&big);
    store.put(big_id, big.clone()).await.unwrap();
    assert!(store.locate(big_id).is_none(), "over max_item_bytes: one file");
    assert_eq!(store.get(big_id).await.unwrap(), Some(big));
    assert_eq!(store.get(old_id).await.unwrap(), Some(old));
    assert_eq!(ids(&store).await, HashSet::from([big_id, old_id]));
    assert!(store.delete(old_id).await.unwrap());
    assert!(store.delete(big_id).await.unwrap());
    assert!(ids(&store).await.is_empty());
    store.check().await.unwrap();
}

#[tokio::test]
async fn a_sharing_process_writes_files_the_owner_reads() {
    let dir = tempfile::tempdir().unwrap();
    let owner = own(dir.path(), small());
    let a = body(1);
    owner.put(a.0, a.1.clone()).await.unwrap();
    let worker = SegmentArtifacts::open_with(dir.path(), "", small(), Access::OwnOrShare, false).unwrap();
    assert!(!worker.is_owner(), "the owner holds the lock");
    let b = body(2);
    worker.put(b.0, b.1.clone()).await.unwrap();
    assert!(owner.locate(b.0).is_none(), "written as one file");
    assert_eq!(owner.get(b.0).await.unwrap(), Some(b.1.clone()), "the owner reads it");
    assert_eq!(ids(&owner).await, HashSet::from([a.0, b.0]));
    // A segment record is the owner's to delete: left in place, not an error.
    assert!(!worker.delete(a.0).await.unwrap());
    assert_eq!(owner.get(a.0).await.unwrap(), Some(a.1.clone()));
    assert!(worker.delete(b.0).await.unwrap(), "its own file it deletes");
    assert_eq!(owner.get(b.0).await.unwrap(), None);
    // With no owner left, the next sharing process owns the store.
    drop(owner);
    let next = SegmentArtifacts::open_with(dir.path(), "", small(), Access::OwnOrShare, false).unwrap();
    assert!(next.is_owner());
}
