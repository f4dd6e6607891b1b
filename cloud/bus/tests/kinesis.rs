//! The Kinesis target against a real moto server (run under `cloud/bus/scripts/with-moto.sh`,
//! which sets OUTRIDER_TEST_MOTO), and — for the one thing moto cannot do, fail some records of
//! a PutRecords call — against a fake [`PutRecordsApi`].
//!
//!   bash cloud/bus/scripts/with-moto.sh cargo test -p outrider-bus --test kinesis

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::types::ShardIteratorType;
use outrider_bus::target::{Delivery, DeliveryError, Target};
use outrider_bus::targets::kinesis::{
    sdk_client, KinesisConfig, KinesisTarget, PutRecord, PutRecordsApi, RecordOutcome,
    SdkPutRecords, MAX_RECORD_BYTES,
};
use outrider_proto::Event;
use parking_lot::Mutex;

/// moto's URL; the tests fail (never skip) without it.
fn moto() -> String {
    match std::env::var("OUTRIDER_TEST_MOTO") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "OUTRIDER_TEST_MOTO is not set: run the Kinesis tests against moto with \
             `bash cloud/bus/scripts/with-moto.sh cargo test -p outrider-bus --test kinesis`"
        ),
    }
}

fn config(stream: &str) -> KinesisConfig {
    KinesisConfig::new(stream)
        .with_region("us-east-1")
        .with_endpoint_url(moto())
        .with_static_credentials("testing", "testing")
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    for _ in 0..100 {
        let s = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .unwrap();
        let status = s.stream_description_summary().map(|d| d.stream_status());
        if status == Some(&aws_sdk_kinesis::types::StreamStatus::Active) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {name} never became ACTIVE");
}

/// Every record of the stream, from every shard: (partition key, data).
async fn read_all(client: &aws_sdk_kinesis::Client, stream: &str) -> Vec<(String, Vec<u8>)> {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let mut out = Vec::new();
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(str::to_string);
        while let Some(it) = iterator {
            let r = client
                .get_records()
                .shard_iterator(it)
                .limit(10_000)
                .send()
                .await
                .unwrap();
            if r.records().is_empty() {
                break;
            }
            for rec in r.records() {
                out.push((
                    rec.partition_key().unwrap_or_default().to_string(),
                    rec.data().as_ref().to_vec(),
                ));
            }
            iterator = r.next_shard_iterator().map(str::to_string);
        }
    }
    out
}

fn delivery(i: usize, detail: &str, payload: String) -> Delivery {
    Delivery {
        id: format!("del-{i}"),
        bus: "default".into(),
        rule: "to-kinesis".into(),
        target_id: "stream".into(),
        event: Arc::new(Event {
            id: format!("ev-{i:05}"),
            source: "shop".into(),
            detail_type: "OrderPlaced".into(),
            detail: detail.to_string(),
            ..Default::default()
        }),
        payload,
        attempt: 1,
    }
}

/// Counts the PutRecords calls (and their sizes) made through the real API.
struct Counting {
    inner: SdkPutRecords,
    calls: Mutex<Vec<usize>>,
}

#[async_trait]
impl PutRecordsApi for Counting {
    async fn put_records(
        &self,
        stream: &str,
        records: &[PutRecord],
    ) -> Result<Vec<RecordOutcome>, DeliveryError> {
        self.calls.lock().push(records.len());
        self.inner.put_records(stream, records).await
    }
}

#[tokio::test]
async fn delivers_1200_records_in_three_calls_and_reads_them_back() {
    let stream = unique("orders");
    let cfg = config(&stream);
    let client = sdk_client(&cfg).await;
    create_stream(&client, &stream, 2).await;
    let api = Arc::new(Counting {
        inner: SdkPutRecords::new(client.clone()),
        calls: Mutex::new(Vec::new()),
    });
    let target = KinesisTarget::with_api(cfg, api.clone()).unwrap();
    assert_eq!((target.kind(), target.max_batch()), ("kinesis", 500));

    let batch: Vec<Delivery> = (0..1200)
        .map(|i| {
            delivery(
                i,
                "{}",
                format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(i % 97)),
            )
        })
        .collect();
    let results = target.deliver(&batch).await;
    assert_eq!(results.len(), 1200);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r, &Ok(()), "record {i}");
    }
    assert_eq!(*api.calls.lock(), vec![500, 500, 200]);

    let got = read_all(&client, &stream).await;
    assert_eq!(got.len(), 1200);
    let got: HashMap<String, Vec<u8>> = got.into_iter().collect();
    assert_eq!(got.len(), 1200, "partition keys (event ids) are distinct");
    for d in &batch {
        assert_eq!(
            got.get(&d.event.id).map(|v| v.as_slice()),
            Some(d.payload.as_bytes()),
            "{}",
            d.event.id
        );
    }
}

#[tokio::test]
async fn partition_key_comes_from_the_path_or_the_event_id() {
    let stream = unique("keys");
    let cfg = config(&stream).with_partition_key_path("$.detail.customer.id");
    let client = sdk_client(&cfg).await;
    create_stream(&client, &stream, 1).await;
    let target = KinesisTarget::connect(cfg).await.unwrap();
    let batch = vec![
        delivery(0, r#"{"customer":{"id":"c-7"}}"#, "a".into()),
        delivery(1, r#"{"customer":{"id":42}}"#, "b".into()),
        // Nothing at the path, null, or an empty string: the event id.
        delivery(2, r#"{"other":1}"#, "c".into()),
        delivery(3, r#"{"customer":{"id":null}}"#, "d".into()),
        delivery(4, r#"{"customer":{"id":""}}"#, "e".into()),
    ];
    assert_eq!(target.deliver(&batch).await, vec![Ok(()); 5]);
    let got: BTreeMap<Vec<u8>, String> = read_all(&client, &stream)
        .await
        .into_iter()
        .map(|(k, v)| (v, k))
        .collect();
    let want: BTreeMap<Vec<u8>, String> = [
        ("a", "c-7"),
        ("b", "42"),
        ("c", "ev-00002"),
        ("d", "ev-00003"),
        ("e", "ev-00004"),
    ]
    .into_iter()
    .map(|(d, k)| (d.as_bytes().to_vec(), k.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_missing_stream_is_a_permanent_error_for_every_record() {
    let target = KinesisTarget::connect(config(&unique("no-such-stream")))
        .await
        .unwrap();
    let batch: Vec<Delivery> = (0..3).map(|i| delivery(i, "{}", "x".into())).collect();
    for r in target.deliver(&batch).await {
        let e = r.unwrap_err();
        assert!(!e.retryable, "{e}");
        assert_eq!(e.code, "ResourceNotFoundException", "{e}");
    }
}

#[tokio::test]
async fn calls_stay_under_five_mebibytes_and_oversized_records_fail_alone() {
    let stream = unique("big");
    let cfg = config(&stream);
    let client = sdk_client(&cfg).await;
    create_stream(&client, &stream, 1).await;
    let api = Arc::new(Counting {
        inner: SdkPutRecords::new(client.clone()),
        calls: Mutex::new(Vec::new()),
    });
    let target = KinesisTarget::with_api(cfg, api.clone()).unwrap();
    // Ten 600 KiB records: 8 fit in 5 MiB (with their keys), then 2; the 1 MiB + 1 one fails.
    let mut batch: Vec<Delivery> = (0..10)
        .map(|i| {
            delivery(
                i,
                "{}",
                char::from(b'a' + i as u8).to_string().repeat(600 * 1024),
            )
        })
        .collect();
    batch.insert(4, delivery(99, "{}", "z".repeat(MAX_RECORD_BYTES + 1)));
    let results = target.deliver(&batch).await;
    for (i, r) in results.iter().enumerate() {
        if i == 4 {
            let e = r.clone().unwrap_err();
            assert_eq!(e.code, "RecordTooLarge");
            assert!(!e.retryable);
        } else {
            assert_eq!(r, &Ok(()), "record {i}");
        }
    }
    assert_eq!(*api.calls.lock(), vec![8, 2]);
    let got = read_all(&client, &stream).await;
    assert_eq!(got.len(), 10);
    for (_, data) in got {
        assert_eq!(data.len(), 600 * 1024);
    }
}

/// A stand-in for what moto cannot do: fail chosen records of a call. `failures` maps a record's
/// data to the error codes it gets on its next attempts, in order; records are stored otherwise.
#[derive(Default)]
struct PartialFailures {
    failures: Mutex<HashMap<Vec<u8>, Vec<&'static str>>>,
    calls: Mutex<Vec<Vec<String>>>,
}

#[async_trait]
impl PutRecordsApi for PartialFailures {
    async fn put_records(
        &self,
        _stream: &str,
        records: &[PutRecord],
    ) -> Result<Vec<RecordOutcome>, DeliveryError> {
        self.calls.lock().push(
            records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.data).into_owned())
                .collect(),
        );
        let mut failures = self.failures.lock();
        Ok(records
            .iter()
            .map(|r| match failures.get_mut(&r.data) {
                Some(codes) if !codes.is_empty() => RecordOutcome::Failed {
                    code: codes.remove(0).to_string(),
                    message: "injected".into(),
                },
                _ => RecordOutcome::Stored,
            })
            .collect())
    }
}

#[tokio::test]
async fn failed_records_are_resent_within_the_call_then_reported() {
    const THROTTLED: &str = "ProvisionedThroughputExceededException";
    let api = Arc::new(PartialFailures::default());
    {
        let mut f = api.failures.lock();
        f.insert(b"r2".to_vec(), vec![THROTTLED]);
        f.insert(b"r5".to_vec(), vec![THROTTLED, "InternalFailure"]);
        f.insert(b"r7".to_vec(), vec!["InternalFailure"]);
        f.insert(b"r8".to_vec(), vec!["InvalidArgumentException"]);
        f.insert(b"r9".to_vec(), vec![THROTTLED; 10]);
    }
    let mut cfg = KinesisConfig::new("fake-stream");
    cfg.record_retries = 3;
    cfg.retry_base_delay = Duration::from_millis(5);
    let target = KinesisTarget::with_api(cfg, api.clone()).unwrap();
    let batch: Vec<Delivery> = (0..10)
        .map(|i| delivery(i, "{}", format!("r{i}")))
        .collect();
    let results = target.deliver(&batch).await;
    for (i, r) in results.iter().enumerate() {
        match i {
            8 => {
                let e = r.clone().unwrap_err();
                assert_eq!(e.code, "InvalidArgumentException");
                assert!(!e.retryable, "{e}");
            }
            9 => {
                let e = r.clone().unwrap_err();
                assert_eq!(e.code, THROTTLED);
                assert!(e.retryable, "{e}");
            }
            _ => assert_eq!(r, &Ok(()), "record {i}"),
        }
    }
    // The first call had all ten; each resend only the records still failing retryably.
    let calls = api.calls.lock().clone();
    let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(calls[0].len(), 10);
    assert_eq!(calls[1], r(&["r2", "r5", "r7", "r9"]));
    assert_eq!(calls[2], r(&["r5", "r9"]));
    assert_eq!(calls[3], r(&["r9"]));
}

#[tokio::test]
async fn a_whole_call_error_fails_every_record_of_the_call_alike() {
    struct Down;
    #[async_trait]
    impl PutRecordsApi for Down {
        async fn put_records(
            &self,
            _: &str,
            _: &[PutRecord],
        ) -> Result<Vec<RecordOutcome>, DeliveryError> {
            Err(DeliveryError::retryable(
                "DispatchFailure",
                "connection refused",
            ))
        }
    }
    let target = KinesisTarget::with_api(KinesisConfig::new("s"), Arc::new(Down)).unwrap();
    let batch: Vec<Delivery> = (0..3).map(|i| delivery(i, "{}", "x".into())).collect();
    for r in target.deliver(&batch).await {
        let e = r.unwrap_err();
        assert!(e.retryable);
        assert_eq!(e.code, "DispatchFailure");
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retryable() {
    // A closed port: the SDK's own retries fail too, and every record is retryable.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut cfg = KinesisConfig::new("s")
        .with_region("us-east-1")
        .with_endpoint_url(format!("http://{addr}"))
        .with_static_credentials("testing", "testing");
    cfg.attempt_timeout = Duration::from_secs(2);
    let target = KinesisTarget::connect(cfg).await.unwrap();
    let r = target.deliver(&[delivery(0, "{}", "x".into())]).await;
    let e = r[0].clone().unwrap_err();
    assert!(e.retryable, "{e}");
}
