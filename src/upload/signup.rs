//! Creating the uploader's Cognito user from the tool, in place of the seed's separate Flask
//! script: SignUp, then ConfirmSignUp with the code Cognito sends (ResendConfirmationCode for a
//! new one). After that `aws-login` and the uploader sign in as that user.
//!
//! The user is `upload.username` and the password is read from where the configuration says
//! (`upload.password_env` or `upload.password_file`), never from the command line, where it would
//! stay in the shell history and show in `ps`. SECRET_HASH goes with every call when the app
//! client has a secret. Every outcome, good or bad, says what to run next.

use std::path::Path;

use aws_sdk_cognitoidentityprovider::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cognitoidentityprovider::types::{AttributeType, CodeDeliveryDetailsType};

use super::cognito::{client_secret, describe, password, secret_hash, unsigned_config, AuthError};
use crate::config::UploadConfig;

#[derive(Debug, thiserror::Error)]
pub enum SignUpError {
    #[error("{}", .0.join("\n"))]
    Config(Vec<String>),
    #[error(transparent)]
    Secret(#[from] AuthError),
    /// Cognito answered no; the text says why and what to do.
    #[error("{0}")]
    Refused(String),
    #[error("Cognito is unreachable or failed: {0}\nCheck upload.region and upload.endpoint_url and the network, then run the same command again.")]
    Unavailable(String),
}

/// The Cognito calls for one user of one app client.
pub struct SignUp {
    idp: aws_sdk_cognitoidentityprovider::Client,
    client_id: String,
    client_secret: Option<String>,
    username: String,
    password_env: Option<String>,
    password_file: Option<std::path::PathBuf>,
    /// Where the password is, for messages (never the password).
    password_from: String,
    /// The configuration file, for the commands the messages suggest.
    config: String,
}

impl SignUp {
    /// Check the keys sign-up needs and read the client secret; `config` is the file's path as
    /// the user typed it.
    pub async fn new(cfg: &UploadConfig, config: &Path) -> Result<SignUp, SignUpError> {
        let mut missing = Vec::new();
        for (key, value) in [
            ("upload.region", &cfg.region),
            ("upload.app_client_id", &cfg.app_client_id),
            ("upload.username", &cfg.username),
        ] {
            if value.trim().is_empty() {
                missing.push(format!("{key}: must be set in {} to sign up", config.display()));
            }
        }
        let password_from = match (&cfg.password_file, &cfg.password_env) {
            (Some(file), _) => format!("the file {} (upload.password_file)", file.display()),
            (None, Some(var)) => format!("${var} (upload.password_env)"),
            (None, None) => {
                missing.push("upload.password_env or upload.password_file: one must name where the new user's password is".into());
                String::new()
            }
        };
        if !missing.is_empty() {
            return Err(SignUpError::Config(missing));
        }
        // Read now, so a missing password is reported before anything is sent.
        password(cfg.password_env.as_deref(), cfg.password_file.as_deref())?;
        Ok(SignUp {
            idp: aws_sdk_cognitoidentityprovider::Client::new(&unsigned_config(cfg).await),
            client_id: cfg.app_client_id.clone(),
            client_secret: client_secret(cfg).map_err(AuthError::from)?,
            username: cfg.username.clone(),
            password_env: cfg.password_env.clone(),
            password_file: cfg.password_file.clone(),
            password_from,
            config: config.display().to_string(),
        })
    }

    fn hash(&self) -> Option<String> {
        self.client_secret.as_deref().map(|s| secret_hash(&self.username, &self.client_id, s))
    }

    /// SignUp with `email` as the user's e-mail attribute; returns what to tell the user.
    pub async fn sign_up(&self, email: &str) -> Result<String, SignUpError> {
        let email = email.trim();
        if !email.contains('@') || email.contains(char::is_whitespace) {
            return Err(SignUpError::Refused(format!("--email {email:?} is not an e-mail address")));
        }
        let password = password(self.password_env.as_deref(), self.password_file.as_deref())?;
        let attribute = AttributeType::builder()
            .name("email")
            .value(email)
            .build()
            .map_err(|e| SignUpError::Refused(e.to_string()))?;
        let out = self
            .idp
            .sign_up()
            .client_id(&self.client_id)
            .username(&self.username)
            .password(password)
            .user_attributes(attribute)
            .set_secret_hash(self.hash())
            .send()
            .await
            .map_err(|e| self.refused(&e, "SignUp"))?;
        let user = &self.username;
        let config = &self.config;
        if out.user_confirmed() {
            return Ok(format!(
                "Created Cognito user {user:?} (sub {}); the pool confirmed it already.\n\
                 Next: dicom-anon-gateway aws-login --config {config}",
                out.user_sub()
            ));
        }
        Ok(format!(
            "Created Cognito user {user:?} (sub {}), not confirmed yet.\n{}\n\
             Next: dicom-anon-gateway aws-confirm --config {config} --code <the code>\n\
             (no code within a few minutes: dicom-anon-gateway aws-confirm --config {config} --resend)",
            out.user_sub(),
            delivered(out.code_delivery_details())
        ))
    }

    /// ConfirmSignUp with the code from the message.
    pub async fn confirm(&self, code: &str) -> Result<String, SignUpError> {
        self.idp
            .confirm_sign_up()
            .client_id(&self.client_id)
            .username(&self.username)
            .confirmation_code(code.trim())
            .set_secret_hash(self.hash())
            .send()
            .await
            .map_err(|e| self.refused(&e, "ConfirmSignUp"))?;
        Ok(format!(
            "Confirmed Cognito user {:?}.\nNext: dicom-anon-gateway aws-login --config {} \
             (then set upload.enabled: true and start the node)",
            self.username, self.config
        ))
    }

    /// ResendConfirmationCode.
    pub async fn resend(&self) -> Result<String, SignUpError> {
        let out = self
            .idp
            .resend_confirmation_code()
            .client_id(&self.client_id)
            .username(&self.username)
            .set_secret_hash(self.hash())
            .send()
            .await
            .map_err(|e| self.refused(&e, "ResendConfirmationCode"))?;
        Ok(format!(
            "Sent a new confirmation code for Cognito user {:?}.\n{}\n\
             Next: dicom-anon-gateway aws-confirm --config {} --code <the code>",
            self.username,
            delivered(out.code_delivery_details()),
            self.config
        ))
    }

    /// Cognito's answer in words, with the next step for each refusal a user can fix.
    fn refused<E, R>(&self, e: &SdkError<E, R>, call: &str) -> SignUpError
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: std::fmt::Debug + 'static,
    {
        let SdkError::ServiceError(s) = e else {
            return SignUpError::Unavailable(format!("{call}: {}", describe(e)));
        };
        let err = s.err();
        let said =
            format!("{call}: {}: {}", err.code().unwrap_or("error"), err.message().unwrap_or_default());
        let (user, config, password_from) = (&self.username, &self.config, &self.password_from);
        let next = match err.code() {
            Some("UsernameExistsException") => format!(
                "User {user:?} exists already. Not confirmed yet: dicom-anon-gateway aws-confirm --config {config} --code <the code> \
                 (or --resend for a new code). Confirmed: dicom-anon-gateway aws-login --config {config}. \
                 To create another user, change upload.username."
            ),
            Some("InvalidPasswordException") => format!(
                "Put a password that meets the pool's password policy in {password_from}, then run aws-signup again."
            ),
            Some("CodeMismatchException") => format!(
                "Check the code in the latest message, or get a new one: dicom-anon-gateway aws-confirm --config {config} --resend"
            ),
            Some("ExpiredCodeException") => {
                format!("Get a new code: dicom-anon-gateway aws-confirm --config {config} --resend")
            }
            Some("UserNotFoundException") => format!(
                "There is no user {user:?} in the pool: sign up first with dicom-anon-gateway aws-signup --config {config} --email <your e-mail>"
            ),
            Some("NotAuthorizedException") if err.message().unwrap_or_default().contains("CONFIRMED") => {
                format!("The user is confirmed already: dicom-anon-gateway aws-login --config {config}")
            }
            Some("NotAuthorizedException") => "Check that upload.client_secret_env or upload.client_secret_file holds the \
                 secret of upload.app_client_id, and that the user pool lets users sign themselves up."
                .to_string(),
            Some("ResourceNotFoundException") => {
                "Check upload.app_client_id and upload.region: the app client is not in that region.".to_string()
            }
            Some("InvalidParameterException") => {
                "Check the e-mail address and upload.username against the pool's sign-up rules.".to_string()
            }
            Some("LimitExceededException" | "TooManyRequestsException" | "TooManyFailedAttemptsException") => {
                "Cognito limits attempts: wait a few minutes, then run the same command again.".to_string()
            }
            _ => return SignUpError::Unavailable(said),
        };
        SignUpError::Refused(format!("Cognito refused {said}\n{next}"))
    }
}

/// Where Cognito sent the code (it masks the address itself: `a***@e***`).
fn delivered(details: Option<&CodeDeliveryDetailsType>) -> String {
    match details {
        Some(d) => format!(
            "Cognito sent a confirmation code by {} to {}.",
            d.delivery_medium().map_or("message", |m| m.as_str()),
            d.destination().unwrap_or("the user's address")
        ),
        None => {
            "Cognito did not say where it sent the confirmation code; look in the e-mail given to --email."
                .into()
        }
    }
}
