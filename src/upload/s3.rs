//! Putting one anonymized file into the bucket: a plain put or a multipart upload by size, always
//! with a CRC32 checksum, and the check that skips an object already there.

use std::path::Path;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use tokio::io::AsyncReadExt;

/// Size of each part of a multipart upload (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;

/// Whose fault a failed put is.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The credentials expired or were refused: refresh them, then retry.
    #[error("S3 refused the credentials: {0}")]
    Auth(String),
    /// Network, throttling, a 5xx, an unexpected answer: retry later.
    #[error("S3: {0}")]
    Retry(String),
    /// A step of the key is not one normal path component: never put (the pipeline checks the
    /// same before a file reaches `public/`, so only an index edited by hand gets here).
    #[error("the object key's {what} {why}")]
    Key { what: &'static str, why: crate::path_component::ComponentError },
    /// The local file cannot be read.
    #[error("cannot read {path}: {source}")]
    Local { path: String, source: std::io::Error },
}

/// Where objects go: `<prefix>/<sub>/<project>/<patient>/<study>/<series>/<sop>.dcm` (RSNA's).
#[derive(Debug, Clone)]
pub struct Target {
    pub bucket: String,
    pub prefix: String,
    pub project: String,
    pub multipart_threshold: u64,
}

impl Target {
    /// The directory under which this node's objects live, ending in `/`.
    pub fn base(&self, sub: Option<&str>) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if !self.prefix.is_empty() {
            parts.push(self.prefix.trim_end_matches('/'));
        }
        if let Some(sub) = sub {
            parts.push(sub);
        }
        parts.push(&self.project);
        format!("{}/", parts.join("/"))
    }

    /// The key of the file at `rel_path` under `public/`. The Cognito `sub` and every step of the
    /// path must each be one normal component: nothing may step out of this node's prefix.
    pub fn key(&self, sub: Option<&str>, rel_path: &str) -> Result<String, PutError> {
        use crate::path_component::component;
        if let Some(sub) = sub {
            component(sub).map_err(|why| PutError::Key { what: "identity (sub)", why })?;
        }
        let rel = rel_path.replace('\\', "/");
        for step in rel.split('/') {
            component(step).map_err(|why| PutError::Key { what: "path", why })?;
        }
        Ok(format!("{}{rel}", self.base(sub)))
    }

    /// Upload `file` to `key`, with its `digest` as the object's `x-amz-meta-sha256`; returns
    /// the ETag.
    pub async fn put(
        &self,
        client: &aws_sdk_s3::Client,
        key: &str,
        file: &Path,
        size: u64,
        digest: Option<&str>,
    ) -> Result<Option<String>, PutError> {
        if size > self.multipart_threshold {
            return self.put_multipart(client, key, file, digest).await;
        }
        let body = ByteStream::from_path(file).await.map_err(|e| PutError::Local {
            path: file.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        let out = client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/dicom")
            .content_length(size as i64)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_metadata(metadata(digest))
            .body(body)
            .customize()
            .config_override(one_attempt())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out.e_tag().map(str::to_string))
    }

    async fn put_multipart(
        &self,
        client: &aws_sdk_s3::Client,
        key: &str,
        file: &Path,
        digest: Option<&str>,
    ) -> Result<Option<String>, PutError> {
        let created = client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/dicom")
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_metadata(metadata(digest))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let upload_id = created.upload_id().ok_or_else(|| PutError::Retry("no UploadId".into()))?.to_string();
        match self.upload_parts(client, key, file, &upload_id).await {
            Ok(etag) => Ok(etag),
            Err(e) => {
                // Leave no orphaned parts behind (they are billed until aborted).
                let _ = client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        client: &aws_sdk_s3::Client,
        key: &str,
        file: &Path,
        upload_id: &str,
    ) -> Result<Option<String>, PutError> {
        let local = |source| PutError::Local { path: file.display().to_string(), source };
        let mut f = tokio::fs::File::open(file).await.map_err(local)?;
        let mut parts = Vec::new();
        for number in 1.. {
            let mut buf = Vec::with_capacity(PART_SIZE);
            (&mut f).take(PART_SIZE as u64).read_to_end(&mut buf).await.map_err(local)?;
            if buf.is_empty() {
                break;
            }
            let out = client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| classify(&e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                    .build(),
            );
        }
        let done = client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(done.e_tag().map(str::to_string))
    }

    /// Whether `key` already holds this file: the same digest when we know it (an object without
    /// one, or with another, is an earlier version: not there); else the same size, and the same
    /// CRC32 when S3 has one.
    pub async fn already_there(
        &self,
        client: &aws_sdk_s3::Client,
        key: &str,
        file: &Path,
        size: u64,
        digest: Option<&str>,
    ) -> Result<Option<Option<String>>, PutError> {
        let head = client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await;
        let head = match head {
            Ok(h) => h,
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => return Ok(None),
            Err(e) => return Err(classify(&e)),
        };
        if head.content_length() != Some(size as i64) {
            return Ok(None);
        }
        if let Some(digest) = digest {
            let stored = head.metadata().and_then(|m| m.get(DIGEST_KEY));
            return Ok((stored.map(String::as_str) == Some(digest)).then(|| head.e_tag().map(str::to_string)));
        }
        // A multipart object's checksum is one of part checksums, not of the file: size decides.
        let whole_object = size <= self.multipart_threshold;
        if let Some(remote) = head.checksum_crc32().filter(|_| whole_object) {
            let bytes = tokio::fs::read(file)
                .await
                .map_err(|source| PutError::Local { path: file.display().to_string(), source })?;
            let local =
                base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(&bytes).to_be_bytes());
            if remote != local {
                return Ok(None);
            }
        }
        Ok(Some(head.e_tag().map(str::to_string)))
    }

    /// Every key under `base`, relative to it (RSNA's rule: a key that exists counts as uploaded).
    pub async fn list(&self, client: &aws_sdk_s3::Client, base: &str) -> Result<Vec<String>, PutError> {
        let mut keys = Vec::new();
        let mut pages = client.list_objects_v2().bucket(&self.bucket).prefix(base).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(&e))?;
            for o in page.contents() {
                if let Some(rel) = o.key().and_then(|k| k.strip_prefix(base)) {
                    keys.push(rel.to_string());
                }
            }
        }
        Ok(keys)
    }
}

/// The object's user metadata key for the file's SHA-256 (`x-amz-meta-sha256`).
const DIGEST_KEY: &str = "sha256";

fn metadata(digest: Option<&str>) -> Option<std::collections::HashMap<String, String>> {
    digest.map(|d| std::collections::HashMap::from([(DIGEST_KEY.to_string(), d.to_string())]))
}

/// A put is sent once: when its answer is lost the object may be there already, and only the
/// worker's own retry asks the bucket before sending it again (the SDK's built-in retries would
/// put it twice). Parts, completions (repeatable on one upload id), heads and listings keep the
/// SDK's retries.
fn one_attempt() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::new().retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
}

fn classify<E, R>(e: &SdkError<E, R>) -> PutError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug + 'static,
{
    let what = crate::observe::error_chain(e);
    match e.code() {
        Some(
            "ExpiredToken"
            | "InvalidAccessKeyId"
            | "InvalidToken"
            | "AccessDenied"
            | "SignatureDoesNotMatch"
            | "TokenRefreshRequired",
        ) => PutError::Auth(what),
        _ => PutError::Retry(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_rsnas_layout() {
        let t = Target {
            bucket: "b".into(),
            prefix: "private/".into(),
            project: "TBI".into(),
            multipart_threshold: 1,
        };
        assert_eq!(
            t.key(Some("sub-1"), "99.99-000001/1.2/1.3/1.4.dcm").unwrap(),
            "private/sub-1/TBI/99.99-000001/1.2/1.3/1.4.dcm"
        );
        for (sub, rel) in [
            (Some("sub-1"), "../../other/1.2/1.3/1.4.dcm"),
            (Some("sub-1"), "TRIAL/../../1.3/1.4.dcm"),
            (Some("sub-1"), "/1.2/1.3/1.4.dcm"),
            (Some("../sub-2"), "99.99-000001/1.2/1.3/1.4.dcm"),
            (Some("sub/2"), "99.99-000001/1.2/1.3/1.4.dcm"),
        ] {
            assert!(t.key(sub, rel).is_err(), "{sub:?} {rel}");
        }
        assert_eq!(t.base(None), "private/TBI/");
    }
}
