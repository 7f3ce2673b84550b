//! The S3 client with current credentials: signed in once, cached, refreshed before expiry, one
//! refresh at a time however many uploads wait for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use super::cognito::{unsigned_config, AuthError, Cognito, Session};
use crate::config::{UploadAuth, UploadConfig};

/// An S3 client and the user directory (`sub`) its keys go under.
#[derive(Clone)]
pub struct Access {
    pub client: aws_sdk_s3::Client,
    /// `None` with the default credential chain: keys then have no user directory.
    pub sub: Option<String>,
}

pub struct Credentials {
    source: Source,
    /// `upload.refresh_margin_s`; see [`refresh_margin`] for the margin applied.
    margin: Duration,
    /// Whether the margin was found too long for the credentials' lifetime and said so.
    clamp_reported: AtomicBool,
    /// Region, endpoint and HTTP client, loaded once: each refresh's S3 client is built on it,
    /// so its connections (and their TLS sessions) outlive the credentials.
    shared: aws_config::SdkConfig,
    /// A local endpoint (`upload.endpoint_url`): path-style addressing.
    local_endpoint: bool,
    /// Held across a refresh, so concurrent callers wait for the one refresh in progress.
    cache: Mutex<Option<Cached>>,
}

/// The current session, its client, and when to refresh it.
struct Cached {
    session: Session,
    access: Access,
    refresh_at: SystemTime,
}

/// How long before expiry to refresh credentials that are `lifetime` long: the configured margin,
/// but at most half the lifetime. A margin as long as the lifetime (Cognito's test doubles and
/// some identity pools hand out credentials shorter than the 600 s default) would make every
/// upload refresh first.
pub fn refresh_margin(configured: Duration, lifetime: Duration) -> Duration {
    configured.min(lifetime / 2)
}

enum Source {
    Cognito(Box<Cognito>),
    DefaultChain(Access),
}

impl Credentials {
    pub async fn new(cfg: &UploadConfig) -> Result<Credentials, AuthError> {
        let local_endpoint = cfg.endpoint_url.is_some();
        let (source, shared) = match cfg.auth {
            UploadAuth::Cognito => {
                let shared = unsigned_config(cfg).await;
                (Source::Cognito(Box::new(Cognito::new(cfg, &shared)?)), shared)
            }
            UploadAuth::DefaultChain => {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(cfg.region.clone()));
                if let Some(url) = &cfg.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                let shared = loader.load().await;
                let access = Access { client: s3_client(&shared, local_endpoint, None), sub: None };
                (Source::DefaultChain(access), shared)
            }
        };
        Ok(Credentials {
            source,
            margin: Duration::from_secs(cfg.refresh_margin_s),
            clamp_reported: AtomicBool::new(false),
            shared,
            local_endpoint,
            cache: Mutex::new(None),
        })
    }

    /// Sign-ins and refreshes so far (Cognito only).
    pub fn counts(&self) -> (u64, u64) {
        match &self.source {
            Source::Cognito(c) => c.counts(),
            Source::DefaultChain(_) => (0, 0),
        }
    }

    /// The signed-in session (Cognito), signing in if needed; for `aws-login`.
    pub async fn session(&self) -> Result<Option<Session>, AuthError> {
        self.access().await?;
        Ok(self.cache.lock().await.as_ref().map(|c| c.session.clone()))
    }

    /// A client whose credentials are good for at least the refresh margin.
    pub async fn access(&self) -> Result<Access, AuthError> {
        let cognito = match &self.source {
            Source::DefaultChain(access) => return Ok(access.clone()),
            Source::Cognito(c) => c,
        };
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref() {
            if SystemTime::now() < cached.refresh_at {
                return Ok(cached.access.clone());
            }
        }
        let now = SystemTime::now();
        let session = match cache.as_ref() {
            Some(old) => cognito.refresh(&old.session).await?,
            None => cognito.sign_in().await?,
        };
        let left = session.expires.duration_since(now).unwrap_or_default();
        let margin = refresh_margin(self.margin, left);
        if margin < self.margin && !self.clamp_reported.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                refresh_margin_s = self.margin.as_secs(),
                valid_s = left.as_secs(),
                applied_margin_s = margin.as_secs(),
                "upload.refresh_margin_s is longer than half the credentials' lifetime; refreshing at half their lifetime instead"
            );
        }
        tracing::info!(sub = %session.sub, valid_s = left.as_secs(), "AWS credentials obtained through Cognito");
        let client = s3_client(&self.shared, self.local_endpoint, Some(session.credentials.clone()));
        let access = Access { client, sub: Some(session.sub.clone()) };
        let refresh_at = session.expires.checked_sub(margin).unwrap_or(now);
        *cache = Some(Cached { session, access: access.clone(), refresh_at });
        Ok(access)
    }

    /// Forget the cached credentials (S3 said they expired or were refused).
    pub async fn invalidate(&self) {
        if let Some(cached) = self.cache.lock().await.as_mut() {
            cached.refresh_at = SystemTime::UNIX_EPOCH;
        }
    }
}

/// S3 with path-style addressing for local endpoints (no `bucket.localhost` DNS look-ups).
fn s3_client(
    shared: &aws_config::SdkConfig,
    local_endpoint: bool,
    credentials: Option<aws_sdk_s3::config::Credentials>,
) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::config::Builder::from(shared).force_path_style(local_endpoint);
    if let Some(c) = credentials {
        b = b.credentials_provider(c);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_at_most_half_the_lifetime() {
        let s = Duration::from_secs;
        assert_eq!(refresh_margin(s(600), s(3600)), s(600), "hour-long credentials: as configured");
        assert_eq!(refresh_margin(s(600), s(90)), s(45), "moto's 90 s: refreshed at half-life");
        assert_eq!(refresh_margin(s(600), s(0)), s(0));
    }
}
