//! Kinesis Data Streams target: deliveries become records of one `PutRecords` call per chunk.
//!
//! # Records
//!
//! A record's data is the delivery's payload, byte for byte. Its partition key comes from
//! [`KinesisConfig::partition_key_path`], a JSONPath (the subset of [`crate::jsonpath`]) into the
//! event's EventBridge JSON (`outrider_proto::eventbridge::to_json`), not into the payload: a
//! string value is used as it is, a number, boolean, object or array as its compact JSON text.
//! **When the path selects nothing, `null` or an empty string, the partition key is the event's
//! id** (the delivery id for an event without one), the same as when no path is configured: an
//! event missing the field is still delivered (spread over shards by its id) rather than
//! dead-lettered. A key longer than [`MAX_PARTITION_KEY_CHARS`] characters is a permanent error
//! of that delivery.
//!
//! # Batches
//!
//! [`Target::max_batch`] is 500 (the PutRecords limit). A batch is split into calls of at most
//! 500 records and [`MAX_CALL_BYTES`] (5 MiB, data plus partition keys), sent one after another;
//! a record above [`MAX_RECORD_BYTES`] (1 MiB) fails permanently on its own.
//!
//! # Failures
//!
//! PutRecords answers per record. Records failing with `ProvisionedThroughputExceededException`,
//! `InternalFailure` or `KMSThrottlingException` are sent again, alone, within the same
//! [`Target::deliver`] call, up to [`KinesisConfig::record_retries`] times with exponential
//! backoff from [`KinesisConfig::retry_base_delay`]; those still failing are reported retryable
//! (the bus's retry policy takes over). A retried record can land after records that followed
//! it: Kinesis keeps no order across retries. Any other per-record error code is permanent.
//!
//! When the whole call fails: a missing stream (`ResourceNotFoundException`), refused access
//! (`AccessDeniedException`, KMS key errors, bad credentials) and invalid requests
//! (`InvalidArgumentException`, `ValidationException`) are permanent for every record of the
//! call; throttling, 5xx, network errors and timeouts are retryable for every record (after the
//! SDK's own retries of the call).
//!
//! # Client
//!
//! [`KinesisTarget::connect`] builds an `aws-sdk-kinesis` client with one HTTP/TLS stack
//! (`aws-smithy-http-client` with rustls and ring; system trust roots), the region given or the
//! default chain's, an optional endpoint override (LocalStack, moto) and either static
//! credentials or the default credential chain (environment, profile, web identity, ECS, IMDS).
//! [`KinesisTarget::with_api`] takes any [`PutRecordsApi`] instead: the SDK client
//! ([`SdkPutRecords`]), a wrapper of it, or a fake for failures an emulator cannot produce.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use crate::jsonpath::JsonPath;
use crate::model::Destination;
use crate::target::{Delivery, DeliveryError, Target};

/// Records per PutRecords call (Kinesis' limit).
pub const MAX_RECORDS_PER_CALL: usize = 500;
/// Bytes of data plus partition key in one record (Kinesis' limit: 1 MiB).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Bytes of data plus partition keys in one PutRecords call (Kinesis' limit: 5 MiB).
pub const MAX_CALL_BYTES: usize = 5 * 1024 * 1024;
/// Longest partition key, in Unicode characters (Kinesis' limit).
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Per-record retries within one delivery unless configured.
pub const DEFAULT_RECORD_RETRIES: u32 = 3;
/// First backoff of per-record retries unless configured (then doubled each time, at most 2 s).
pub const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_millis(100);
/// Time allowed for one attempt of a PutRecords call unless configured.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-record error codes that another attempt may fix.
const RETRYABLE_RECORD_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "InternalFailure",
    "InternalFailureException",
    "KMSThrottlingException",
];

/// Whole-call error codes that another attempt may fix (besides any 5xx).
const RETRYABLE_CALL_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "InternalFailure",
    "InternalFailureException",
    "KMSThrottlingException",
    "LimitExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "ExpiredTokenException",
];

/// Static AWS credentials (instead of the default chain).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The settings of one Kinesis target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisConfig {
    /// The stream's name.
    pub stream_name: String,
    /// The AWS region (`None`: the default chain's: `AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// An endpoint URL replacing AWS's (LocalStack, moto: `http://127.0.0.1:5000`).
    pub endpoint_url: Option<String>,
    /// Static credentials; `None` uses the default credential chain.
    pub credentials: Option<StaticCredentials>,
    /// JSONPath into the event's EventBridge JSON for the partition key (`None`: the event id).
    pub partition_key_path: Option<String>,
    /// Resends of records failing with a throttling or internal error code, within one delivery.
    pub record_retries: u32,
    /// Backoff before the first resend; doubled each time, capped at 2 s.
    pub retry_base_delay: Duration,
    /// Time allowed for one attempt of a PutRecords call (the SDK retries a failed attempt).
    pub attempt_timeout: Duration,
}

impl KinesisConfig {
    /// A configuration for `stream_name` with the defaults: region and credentials from the
    /// default chain, no endpoint override, the event id as partition key,
    /// [`DEFAULT_RECORD_RETRIES`], [`DEFAULT_RETRY_BASE_DELAY`], [`DEFAULT_ATTEMPT_TIMEOUT`].
    pub fn new(stream_name: impl Into<String>) -> Self {
        KinesisConfig {
            stream_name: stream_name.into(),
            region: None,
            endpoint_url: None,
            credentials: None,
            partition_key_path: None,
            record_retries: DEFAULT_RECORD_RETRIES,
            retry_base_delay: DEFAULT_RETRY_BASE_DELAY,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }

    /// The stream name and partition key path of a `Destination::Kinesis`, other settings at
    /// their defaults (the caller adds region, endpoint and credentials from its own settings).
    pub fn from_destination(destination: &Destination) -> Result<Self, KinesisConfigError> {
        match destination {
            Destination::Kinesis {
                stream_name,
                partition_key_path,
            } => {
                let mut c = KinesisConfig::new(stream_name.clone());
                c.partition_key_path = partition_key_path.clone();
                Ok(c)
            }
            other => Err(KinesisConfigError::Invalid(format!(
                "destination {other:?} is not a Kinesis stream"
            ))),
        }
    }

    /// Sets [`KinesisConfig::region`].
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sets [`KinesisConfig::endpoint_url`].
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Sets [`KinesisConfig::credentials`] to static ones.
    pub fn with_static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(StaticCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        });
        self
    }

    /// Sets [`KinesisConfig::partition_key_path`].
    pub fn with_partition_key_path(mut self, path: impl Into<String>) -> Self {
        self.partition_key_path = Some(path.into());
        self
    }
}

/// Why a Kinesis target cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KinesisConfigError {
    /// The stream name is not 1–128 of `[a-zA-Z0-9_.-]`.
    #[error("invalid Kinesis stream name {0:?}: 1 to 128 letters, digits, '_', '.' or '-'")]
    InvalidStreamName(String),
    /// The partition key path does not parse.
    #[error("invalid partition key path: {0}")]
    InvalidPartitionKeyPath(String),
    /// Another setting out of range, or a destination that is not Kinesis.
    #[error("Kinesis configuration: {0}")]
    Invalid(String),
}

/// One record of a PutRecords call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecord {
    /// The record's data (the delivery's payload).
    pub data: Vec<u8>,
    /// The record's partition key.
    pub partition_key: String,
}

/// The answer for one record of a successful PutRecords call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Stored.
    Stored,
    /// Not stored: Kinesis' `ErrorCode` and `ErrorMessage` for the record.
    Failed {
        /// `ProvisionedThroughputExceededException`, `InternalFailure` ...
        code: String,
        /// Kinesis' message.
        message: String,
    },
}

/// The PutRecords call, as the target uses it: the SDK client ([`SdkPutRecords`]) or a
/// stand-in. An implementation returns one outcome per record, in order, or one error for the
/// whole call (its `retryable` says whether another call may succeed).
#[async_trait]
pub trait PutRecordsApi: Send + Sync {
    /// Puts `records` into `stream`.
    async fn put_records(
        &self,
        stream: &str,
        records: &[PutRecord],
    ) -> Result<Vec<RecordOutcome>, DeliveryError>;
}

/// [`PutRecordsApi`] over an `aws-sdk-kinesis` client.
#[derive(Debug, Clone)]
pub struct SdkPutRecords {
    client: aws_sdk_kinesis::Client,
}

impl SdkPutRecords {
    /// Wraps a client.
    pub fn new(client: aws_sdk_kinesis::Client) -> Self {
        SdkPutRecords { client }
    }

    /// The client.
    pub fn client(&self) -> &aws_sdk_kinesis::Client {
        &self.client
    }
}

#[async_trait]
impl PutRecordsApi for SdkPutRecords {
    async fn put_records(
        &self,
        stream: &str,
        records: &[PutRecord],
    ) -> Result<Vec<RecordOutcome>, DeliveryError> {
        let mut entries = Vec::with_capacity(records.len());
        for r in records {
            let entry = PutRecordsRequestEntry::builder()
                .data(Blob::new(r.data.clone()))
                .partition_key(r.partition_key.clone())
                .build()
                .map_err(|e| DeliveryError::permanent("InvalidArgumentException", e.to_string()))?;
            entries.push(entry);
        }
        let out = self
            .client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(|e| call_error(stream, &e))?;
        Ok(out
            .records()
            .iter()
            .map(|r| match r.error_code() {
                None => RecordOutcome::Stored,
                Some(code) => RecordOutcome::Failed {
                    code: code.to_string(),
                    message: r.error_message().unwrap_or_default().to_string(),
                },
            })
            .collect())
    }
}

/// Maps a failed PutRecords call to the error every record of the call gets.
fn call_error<E, R>(stream: &str, e: &aws_sdk_kinesis::error::SdkError<E, R>) -> DeliveryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
    let detail = DisplayErrorContext(e).to_string();
    match e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown").to_string();
            let message = format!("PutRecords to stream {stream}: {detail}");
            if RETRYABLE_CALL_CODES.contains(&code.as_str()) {
                DeliveryError::retryable(code, message)
            } else {
                DeliveryError::permanent(code, message)
            }
        }
        SdkError::TimeoutError(_) => DeliveryError::retryable(
            "Timeout",
            format!("PutRecords to stream {stream} timed out: {detail}"),
        ),
        SdkError::ResponseError(_) => DeliveryError::retryable(
            "ResponseError",
            format!("PutRecords to stream {stream}: unreadable response: {detail}"),
        ),
        SdkError::DispatchFailure(_) => DeliveryError::retryable(
            "DispatchFailure",
            format!("PutRecords to stream {stream} was not sent: {detail}"),
        ),
        // Building the request failed: missing credentials or region, an invalid endpoint.
        // Configuration problems, but ones the process environment can fix (credentials that
        // IMDS serves again): retryable.
        SdkError::ConstructionFailure(_) => DeliveryError::retryable(
            "ConstructionFailure",
            format!("PutRecords to stream {stream} could not be built: {detail}"),
        ),
        _ => DeliveryError::retryable(
            "Unknown",
            format!("PutRecords to stream {stream}: {detail}"),
        ),
    }
}

/// Builds an `aws-sdk-kinesis` client for `config` (region, endpoint, credentials, timeouts)
/// over one rustls-with-ring HTTP client. The target uses it; tests use it to create and read
/// streams.
pub async fn sdk_client(config: &KinesisConfig) -> aws_sdk_kinesis::Client {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(config.attempt_timeout)
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts);
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(c) = &config.credentials {
        loader = loader.credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
            None,
            "outrider-static",
        ));
    }
    let shared = loader.load().await;
    aws_sdk_kinesis::Client::new(&shared)
}

/// A Kinesis target (`kind()` = `"kinesis"`, `max_batch()` = 500).
pub struct KinesisTarget {
    api: Arc<dyn PutRecordsApi>,
    stream: String,
    partition_key: Option<JsonPath>,
    record_retries: u32,
    retry_base_delay: Duration,
}

impl std::fmt::Debug for KinesisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisTarget")
            .field("stream", &self.stream)
            .field(
                "partition_key",
                &self.partition_key.as_ref().map(|p| p.as_str()),
            )
            .finish_non_exhaustive()
    }
}

fn validate_stream_name(name: &str) -> Result<(), KinesisConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(KinesisConfigError::InvalidStreamName(name.to_string()))
    }
}

impl KinesisTarget {
    /// Validates `config` and builds the target over the AWS SDK ([`sdk_client`]). No request is
    /// made: a missing stream shows as permanent errors of the first deliveries.
    pub async fn connect(config: KinesisConfig) -> Result<Self, KinesisConfigError> {
        Self::check(&config)?;
        let client = sdk_client(&config).await;
        Self::with_api(config, Arc::new(SdkPutRecords::new(client)))
    }

    /// Builds the target over `api` (region, endpoint and credentials of `config` are unused).
    pub fn with_api(
        config: KinesisConfig,
        api: Arc<dyn PutRecordsApi>,
    ) -> Result<Self, KinesisConfigError> {
        Self::check(&config)?;
        let partition_key = match &config.partition_key_path {
            None => None,
            Some(p) => Some(
                JsonPath::parse(p)
                    .map_err(|e| KinesisConfigError::InvalidPartitionKeyPath(e.to_string()))?,
            ),
        };
        Ok(KinesisTarget {
            api,
            stream: config.stream_name,
            partition_key,
            record_retries: config.record_retries,
            retry_base_delay: config.retry_base_delay,
        })
    }

    fn check(config: &KinesisConfig) -> Result<(), KinesisConfigError> {
        validate_stream_name(&config.stream_name)?;
        if config.attempt_timeout.is_zero() {
            return Err(KinesisConfigError::Invalid(
                "attempt_timeout must not be zero".into(),
            ));
        }
        Ok(())
    }

    /// The stream deliveries go to.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The partition key of a delivery (see the module documentation).
    pub fn partition_key(&self, d: &Delivery) -> Result<String, DeliveryError> {
        let fallback = || {
            if d.event.id.is_empty() {
                d.id.clone()
            } else {
                d.event.id.clone()
            }
        };
        let Some(path) = &self.partition_key else {
            return Ok(fallback());
        };
        let doc = outrider_proto::eventbridge::to_json(&d.event).map_err(|e| {
            DeliveryError::permanent(
                "InvalidEvent",
                format!("event {} has no EventBridge JSON form: {e}", d.event.id),
            )
        })?;
        let key = match path.select(&doc) {
            None | Some(serde_json::Value::Null) => fallback(),
            Some(serde_json::Value::String(s)) if s.is_empty() => fallback(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        let chars = key.chars().count();
        if chars > MAX_PARTITION_KEY_CHARS {
            return Err(DeliveryError::permanent(
                "PartitionKeyTooLong",
                format!(
                    "partition key from {} is {chars} characters; Kinesis takes at most {MAX_PARTITION_KEY_CHARS}",
                    path.as_str()
                ),
            ));
        }
        Ok(key)
    }

    /// Sends the records of one call, resending the retryable failures; fills `results` at the
    /// records' batch indexes.
    async fn put_chunk(
        &self,
        chunk: Vec<(usize, PutRecord)>,
        results: &mut [Option<Result<(), DeliveryError>>],
    ) {
        let mut pending = chunk;
        let mut attempt = 0u32;
        loop {
            let records: Vec<PutRecord> = pending.iter().map(|(_, r)| r.clone()).collect();
            let outcomes = match self.api.put_records(&self.stream, &records).await {
                Ok(o) if o.len() == records.len() => o,
                Ok(o) => {
                    let e = DeliveryError::retryable(
                        "InvalidResponse",
                        format!(
                            "PutRecords answered {} results for {} records",
                            o.len(),
                            records.len()
                        ),
                    );
                    for (i, _) in &pending {
                        results[*i] = Some(Err(e.clone()));
                    }
                    return;
                }
                Err(e) => {
                    for (i, _) in &pending {
                        results[*i] = Some(Err(e.clone()));
                    }
                    return;
                }
            };
            let mut again = Vec::new();
            for ((i, record), outcome) in pending.into_iter().zip(outcomes) {
                match outcome {
                    RecordOutcome::Stored => results[i] = Some(Ok(())),
                    RecordOutcome::Failed { code, message } => {
                        let message = format!("PutRecords to stream {}: {message}", self.stream);
                        if RETRYABLE_RECORD_CODES.contains(&code.as_str()) {
                            results[i] = Some(Err(DeliveryError::retryable(code, message)));
                            again.push((i, record));
                        } else {
                            results[i] = Some(Err(DeliveryError::permanent(code, message)));
                        }
                    }
                }
            }
            if again.is_empty() || attempt >= self.record_retries {
                return;
            }
            let factor = 1u32 << attempt.min(10);
            let delay = self
                .retry_base_delay
                .saturating_mul(factor)
                .min(Duration::from_secs(2));
            tokio::time::sleep(delay).await;
            attempt += 1;
            tracing::debug!(
                stream = %self.stream,
                records = again.len(),
                attempt,
                "resending records Kinesis did not take"
            );
            pending = again;
        }
    }
}

#[async_trait]
impl Target for KinesisTarget {
    fn kind(&self) -> &'static str {
        "kinesis"
    }

    fn max_batch(&self) -> usize {
        MAX_RECORDS_PER_CALL
    }

    async fn deliver(&self, batch: &[Delivery]) -> Vec<Result<(), DeliveryError>> {
        let mut results: Vec<Option<Result<(), DeliveryError>>> = vec![None; batch.len()];
        let mut chunk: Vec<(usize, PutRecord)> = Vec::new();
        let mut chunk_bytes = 0usize;
        for (i, d) in batch.iter().enumerate() {
            let partition_key = match self.partition_key(d) {
                Ok(k) => k,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            let size = d.payload.len() + partition_key.len();
            if size > MAX_RECORD_BYTES {
                results[i] = Some(Err(DeliveryError::permanent(
                    "RecordTooLarge",
                    format!(
                        "record of {size} bytes (data and partition key); Kinesis takes at most {MAX_RECORD_BYTES}"
                    ),
                )));
                continue;
            }
            if chunk.len() == MAX_RECORDS_PER_CALL || chunk_bytes + size > MAX_CALL_BYTES {
                self.put_chunk(std::mem::take(&mut chunk), &mut results)
                    .await;
                chunk_bytes = 0;
            }
            chunk_bytes += size;
            chunk.push((
                i,
                PutRecord {
                    data: d.payload.as_bytes().to_vec(),
                    partition_key,
                },
            ));
        }
        if !chunk.is_empty() {
            self.put_chunk(chunk, &mut results).await;
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(DeliveryError::retryable(
                        "Internal",
                        "no outcome recorded for the delivery",
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_and_paths_are_checked() {
        for bad in ["", "has space", &"x".repeat(129), "a/b"] {
            assert!(validate_stream_name(bad).is_err(), "{bad:?}");
        }
        validate_stream_name("orders_v1.stream-2").unwrap();
        struct Never;
        #[async_trait]
        impl PutRecordsApi for Never {
            async fn put_records(
                &self,
                _: &str,
                _: &[PutRecord],
            ) -> Result<Vec<RecordOutcome>, DeliveryError> {
                unreachable!()
            }
        }
        let bad = KinesisConfig::new("s").with_partition_key_path("detail.x");
        assert!(matches!(
            KinesisTarget::with_api(bad, Arc::new(Never)),
            Err(KinesisConfigError::InvalidPartitionKeyPath(_))
        ));
        let d = Destination::Kinesis {
            stream_name: "s".into(),
            partition_key_path: Some("$.detail.k".into()),
        };
        let c = KinesisConfig::from_destination(&d).unwrap();
        assert_eq!(c.partition_key_path.as_deref(), Some("$.detail.k"));
        let c = StaticCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: None,
        };
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
