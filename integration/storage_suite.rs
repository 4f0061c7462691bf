//! One storage suite, run against every backend: the semantics the repository relies on.

use bytes::Bytes;
use synapse_backup::config::Config;
use synapse_backup::storage::{Put, Storage};

use crate::harness::{self, RepoTarget, Scratch, TestConfig};

async fn storage_suite(s: &Storage) {
    // not found is a value, not an error
    assert!(s.get("a/missing").await.unwrap().is_none());
    // create-only put: first wins, second sees AlreadyExists, content unchanged
    assert_eq!(
        s.put_if_absent("a/one", Bytes::from_static(b"first"))
            .await
            .unwrap(),
        Put::Stored
    );
    assert_eq!(
        s.put_if_absent("a/one", Bytes::from_static(b"second"))
            .await
            .unwrap(),
        Put::AlreadyExists
    );
    assert_eq!(
        s.get("a/one").await.unwrap().unwrap(),
        Bytes::from_static(b"first")
    );
    // overwrite put
    s.put("a/two", Bytes::from_static(b"x")).await.unwrap();
    s.put("a/two", Bytes::from_static(b"y")).await.unwrap();
    assert_eq!(
        s.get("a/two").await.unwrap().unwrap(),
        Bytes::from_static(b"y")
    );
    // head bytes
    assert_eq!(
        s.get_head_bytes("a/one", 3).await.unwrap().unwrap(),
        Bytes::from_static(b"fir")
    );
    // listing is prefix-scoped (by path segment) and sorted
    s.put("ab/three", Bytes::from_static(b"z")).await.unwrap();
    s.put("a/sub/four", Bytes::from_static(b"w")).await.unwrap();
    let keys: Vec<String> = s
        .list("a")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["a/one", "a/sub/four", "a/two"]);
    let sizes: Vec<u64> = s
        .list("a/sub")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.size)
        .collect();
    assert_eq!(sizes, [1]);
    // multipart writer: nothing visible until finish
    let mut w = s.writer("big/part").await.unwrap();
    let chunk = vec![42u8; 5 << 20];
    for _ in 0..4 {
        w.write(&chunk).await.unwrap();
    }
    w.finish().await.unwrap();
    assert_eq!(s.get("big/part").await.unwrap().unwrap().len(), 20 << 20);
    // deleting a missing key is fine; bulk delete
    s.delete("a/missing").await.unwrap();
    s.delete_many(vec!["a/one".into(), "a/two".into(), "a/nope".into()])
        .await
        .unwrap();
    let keys: Vec<String> = s
        .list("a")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["a/sub/four"]);
    // scoping
    let scoped = s.scoped("ab");
    assert_eq!(
        scoped.get("three").await.unwrap().unwrap(),
        Bytes::from_static(b"z")
    );
    assert_eq!(
        scoped
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect::<Vec<_>>(),
        ["three"]
    );
}

fn open(scratch: &Scratch, target: &RepoTarget) -> Storage {
    let cfg = TestConfig::write(
        scratch.path(),
        target,
        "c",
        &scratch.path().join("pgdata"),
        "host=/tmp",
        "",
    );
    let config = Config::load(Some(&cfg.path)).unwrap();
    Storage::open(&config.repository).unwrap()
}

#[tokio::test]
async fn storage_suite_local() {
    if harness::skip("storage_suite_local") {
        return;
    }
    let scratch = Scratch::new("st-local");
    let s = open(&scratch, &RepoTarget::Local(scratch.path().join("repo")));
    storage_suite(&s).await;
}

#[tokio::test]
async fn storage_suite_s3() {
    if harness::skip("storage_suite_s3") {
        return;
    }
    let scratch = Scratch::new("st-s3");
    let target = harness::shared_s3(&scratch, "storage");
    let s = open(&scratch, &target);
    storage_suite(&s).await;
}
