//! Cognito sign-in: user pool (USER_PASSWORD_AUTH, with SECRET_HASH when the app client has a
//! secret), then identity pool credentials, as the RSNA Anonymizer does it, without its two
//! hand patches: SECRET_HASH comes from configuration, and `sub` is found by name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use aws_sdk_cognitoidentityprovider::types::{AuthFlowType, ChallengeNameType};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::{SecretSource, UploadConfig};

/// base64(HMAC-SHA256(key = client secret, message = username ‖ app client id)).
pub fn secret_hash(username: &str, client_id: &str, client_secret: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(client_secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    mac.update(client_id.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Cognito said no: wrong password, unknown user, a challenge we cannot answer. Needs the
    /// operator; retried with backoff in case the secret is fixed meanwhile.
    #[error("Cognito refused the sign-in: {0}")]
    Rejected(String),
    /// No answer, or an answer we could not use: retried with backoff.
    #[error("Cognito is unreachable or failed: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// What a sign-in yields.
#[derive(Clone)]
pub struct Session {
    /// The user's `sub`: the directory under the prefix that this user may write.
    pub sub: String,
    pub identity_id: String,
    pub credentials: aws_sdk_s3::config::Credentials,
    pub expires: SystemTime,
    refresh_token: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens and keys stay out of debug output.
        f.debug_struct("Session").field("sub", &self.sub).field("identity_id", &self.identity_id).finish()
    }
}

pub struct Cognito {
    idp: aws_sdk_cognitoidentityprovider::Client,
    identity: aws_sdk_cognitoidentity::Client,
    region: String,
    user_pool_id: String,
    client_id: String,
    client_secret: Option<String>,
    username: String,
    /// Where the password is; read at every sign-in, so fixing a wrong one needs no restart.
    password_env: Option<String>,
    password_file: Option<std::path::PathBuf>,
    /// The password set by answering NEW_PASSWORD_REQUIRED, until the operator stores it.
    changed_password: Mutex<Option<String>>,
    new_password: Option<String>,
    account_id: String,
    identity_pool_id: String,
    sign_ins: AtomicU64,
    refreshes: AtomicU64,
}

pub(super) fn describe<E: std::error::Error + 'static>(e: &E) -> String {
    crate::observe::error_chain(e)
}

/// The app client's secret, when the configuration names where it is.
pub(super) fn client_secret(cfg: &UploadConfig) -> Result<Option<String>, crate::config::ConfigError> {
    SecretSource {
        key: "upload.client_secret",
        env: cfg.client_secret_env.as_deref(),
        file: cfg.client_secret_file.as_deref(),
    }
    .read()
}

/// The user's password from where the configuration says; never from the command line.
pub(super) fn password(env: Option<&str>, file: Option<&std::path::Path>) -> Result<String, AuthError> {
    Ok(SecretSource { key: "upload.password", env, file }.read()?.ok_or_else(|| {
        crate::config::ConfigError::MissingSecret("upload.password_env or upload.password_file".into())
    })?)
}

/// The shared configuration of the Cognito clients: unsigned calls (user pools and identity pools
/// need no AWS credentials, so no credential chain and no IMDS probe), the region, the endpoint.
pub(super) async fn unsigned_config(cfg: &UploadConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .no_credentials()
        .region(aws_config::Region::new(cfg.region.clone()));
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

impl Cognito {
    /// Read the secrets the configuration names and build the (unsigned) Cognito clients on
    /// `shared` (see [`unsigned_config`]).
    pub fn new(cfg: &UploadConfig, shared: &aws_config::SdkConfig) -> Result<Cognito, AuthError> {
        let client_secret = client_secret(cfg)?;
        // Only needed to answer NEW_PASSWORD_REQUIRED; its absence is reported if that happens.
        let new_password = SecretSource {
            key: "upload.new_password",
            env: cfg.new_password_env.as_deref(),
            file: cfg.new_password_file.as_deref(),
        }
        .read()
        .unwrap_or_default();
        let cognito = Cognito {
            idp: aws_sdk_cognitoidentityprovider::Client::new(shared),
            identity: aws_sdk_cognitoidentity::Client::new(shared),
            region: cfg.region.clone(),
            user_pool_id: cfg.user_pool_id.clone(),
            client_id: cfg.app_client_id.clone(),
            client_secret,
            username: cfg.username.clone(),
            password_env: cfg.password_env.clone(),
            password_file: cfg.password_file.clone(),
            changed_password: Mutex::new(None),
            new_password,
            account_id: cfg.account_id.clone(),
            identity_pool_id: cfg.identity_pool_id.clone(),
            sign_ins: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
        };
        // A password that cannot be found is a configuration error: say so at start.
        cognito.password()?;
        Ok(cognito)
    }

    /// Full sign-ins and refreshes so far (for logs and tests).
    pub fn counts(&self) -> (u64, u64) {
        (self.sign_ins.load(Ordering::Relaxed), self.refreshes.load(Ordering::Relaxed))
    }

    fn password(&self) -> Result<String, AuthError> {
        if let Some(p) = self.changed_password.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(p);
        }
        password(self.password_env.as_deref(), self.password_file.as_deref())
    }

    fn hash(&self) -> Option<String> {
        self.client_secret.as_deref().map(|s| secret_hash(&self.username, &self.client_id, s))
    }

    /// InitiateAuth (USER_PASSWORD_AUTH) → [NEW_PASSWORD_REQUIRED] → GetUser → GetId →
    /// GetCredentialsForIdentity.
    pub async fn sign_in(&self) -> Result<Session, AuthError> {
        self.sign_ins.fetch_add(1, Ordering::Relaxed);
        let password = self.password()?;
        let mut req = self
            .idp
            .initiate_auth()
            .auth_flow(AuthFlowType::UserPasswordAuth)
            .client_id(&self.client_id)
            .auth_parameters("USERNAME", &self.username)
            .auth_parameters("PASSWORD", password);
        if let Some(h) = self.hash() {
            req = req.auth_parameters("SECRET_HASH", h);
        }
        let out = req.send().await.map_err(|e| classify(&e))?;
        let result = match out.challenge_name() {
            None => out.authentication_result().cloned(),
            Some(ChallengeNameType::NewPasswordRequired) => Some(self.new_password(out.session()).await?),
            Some(other) => {
                return Err(AuthError::Rejected(format!(
                    "Cognito asks for the {other} challenge, which this node cannot answer"
                )))
            }
        };
        let result =
            result.ok_or_else(|| AuthError::Unavailable("InitiateAuth returned no tokens".into()))?;
        let id_token = result.id_token().ok_or_else(|| AuthError::Unavailable("no IdToken".into()))?;
        let access_token =
            result.access_token().ok_or_else(|| AuthError::Unavailable("no AccessToken".into()))?;
        let user = self.idp.get_user().access_token(access_token).send().await.map_err(|e| classify(&e))?;
        // Cognito does not order attributes; RSNA's UserAttributes[0] broke when `sub` moved.
        let sub = user
            .user_attributes()
            .iter()
            .find(|a| a.name() == "sub")
            .and_then(|a| a.value())
            .ok_or_else(|| AuthError::Unavailable("GetUser returned no `sub` attribute".into()))?
            .to_string();
        self.identity_session(id_token, sub, result.refresh_token().map(str::to_string)).await
    }

    async fn new_password(
        &self,
        session: Option<&str>,
    ) -> Result<aws_sdk_cognitoidentityprovider::types::AuthenticationResultType, AuthError> {
        let Some(new_password) = &self.new_password else {
            return Err(AuthError::Rejected(format!(
                "Cognito requires a new password for user {:?} (NEW_PASSWORD_REQUIRED): put it in the variable or file \
                 named by upload.new_password_env or upload.new_password_file, then restart",
                self.username
            )));
        };
        let mut req = self
            .idp
            .respond_to_auth_challenge()
            .client_id(&self.client_id)
            .challenge_name(ChallengeNameType::NewPasswordRequired)
            .set_session(session.map(str::to_string))
            .challenge_responses("USERNAME", &self.username)
            .challenge_responses("NEW_PASSWORD", new_password);
        if let Some(h) = self.hash() {
            req = req.challenge_responses("SECRET_HASH", h);
        }
        let out = req.send().await.map_err(|e| classify(&e))?;
        *self.changed_password.lock().unwrap_or_else(|p| p.into_inner()) = Some(new_password.clone());
        tracing::warn!(
            user = %self.username,
            "Cognito password changed as NEW_PASSWORD_REQUIRED asked: store the new password where upload.password_env/_file points"
        );
        out.authentication_result()
            .cloned()
            .ok_or_else(|| AuthError::Unavailable("no tokens after the new password".into()))
    }

    /// New credentials from the refresh token (REFRESH_TOKEN_AUTH); a full sign-in if that fails.
    pub async fn refresh(&self, old: &Session) -> Result<Session, AuthError> {
        if let Some(token) = &old.refresh_token {
            self.refreshes.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .idp
                .initiate_auth()
                .auth_flow(AuthFlowType::RefreshTokenAuth)
                .client_id(&self.client_id)
                .auth_parameters("REFRESH_TOKEN", token);
            if let Some(h) = self.hash() {
                req = req.auth_parameters("SECRET_HASH", h);
            }
            match req.send().await {
                Ok(out) => {
                    if let Some(id_token) = out.authentication_result().and_then(|r| r.id_token()) {
                        return self
                            .identity_session(id_token, old.sub.clone(), old.refresh_token.clone())
                            .await;
                    }
                }
                Err(e) => tracing::info!(error = %classify(&e), "token refresh failed; signing in again"),
            }
        }
        self.sign_in().await
    }

    async fn identity_session(
        &self,
        id_token: &str,
        sub: String,
        refresh_token: Option<String>,
    ) -> Result<Session, AuthError> {
        let provider = format!("cognito-idp.{}.amazonaws.com/{}", self.region, self.user_pool_id);
        let id = self
            .identity
            .get_id()
            .identity_pool_id(&self.identity_pool_id)
            .account_id(&self.account_id)
            .logins(&provider, id_token)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let identity_id =
            id.identity_id().ok_or_else(|| AuthError::Unavailable("GetId returned no IdentityId".into()))?;
        let out = self
            .identity
            .get_credentials_for_identity()
            .identity_id(identity_id)
            .logins(&provider, id_token)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let c = out
            .credentials()
            .ok_or_else(|| AuthError::Unavailable("no credentials for the identity".into()))?;
        let expires = c
            .expiration()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .ok_or_else(|| AuthError::Unavailable("credentials without expiration".into()))?;
        let credentials = aws_sdk_s3::config::Credentials::new(
            c.access_key_id().unwrap_or_default(),
            c.secret_key().unwrap_or_default(),
            c.session_token().map(str::to_string),
            Some(expires),
            "cognito-identity",
        );
        Ok(Session { sub, identity_id: identity_id.to_string(), credentials, expires, refresh_token })
    }
}

/// A Cognito error's kind: the service said no, or it could not be reached.
fn classify<E, R>(e: &aws_sdk_cognitoidentityprovider::error::SdkError<E, R>) -> AuthError
where
    E: std::error::Error + aws_sdk_cognitoidentityprovider::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_sdk_cognitoidentityprovider::error::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            let mut what =
                format!("{}: {}", err.code().unwrap_or("error"), err.message().unwrap_or_default());
            if err.code() == Some("UserNotConfirmedException") {
                what.push_str(
                    " (confirm the user with aws-confirm --config FILE --code CODE from its e-mail)",
                );
            }
            match err.code() {
                Some(
                    "NotAuthorizedException"
                    | "UserNotFoundException"
                    | "PasswordResetRequiredException"
                    | "UserNotConfirmedException"
                    | "ResourceNotFoundException"
                    | "InvalidParameterException",
                ) => AuthError::Rejected(what),
                _ => AuthError::Unavailable(what),
            }
        }
        other => AuthError::Unavailable(describe(other)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_hash_matches_the_documented_vector() {
        assert_eq!(
            super::secret_hash(
                "alice",
                "7r0c0ex4mp1ec1i3nt1d0000",
                "1example23456789abcdefghij0123456789klmnopqrstu"
            ),
            "DMK03Da2oSVU0yo8kaxGjlcZk1HqDVktL6MWxWxQ85Y="
        );
    }
}
