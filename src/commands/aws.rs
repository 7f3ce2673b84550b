//! `aws-signup`, `aws-confirm`, `aws-login`: the Cognito user the uploader signs in as.

use dicom_anon_gateway::cli::ProjectArgs;
use dicom_anon_gateway::observe;
use dicom_anon_gateway::upload::{Credentials, SignUp};

use super::{block_on, Said};

pub fn signup(target: &ProjectArgs, email: &str) -> anyhow::Result<Said> {
    let config = target.load()?;
    observe::init(&config.logging);
    block_on(async {
        let signup = SignUp::new(&config.upload, &target.config).await?;
        Ok(Said::ok(format!("{}\n", signup.sign_up(email).await?)))
    })
}

pub fn confirm(target: &ProjectArgs, code: Option<String>, resend: bool) -> anyhow::Result<Said> {
    let config = target.load()?;
    observe::init(&config.logging);
    block_on(async {
        let signup = SignUp::new(&config.upload, &target.config).await?;
        let said = match (resend, code) {
            (true, _) => signup.resend().await?,
            (false, Some(code)) => signup.confirm(&code).await?,
            (false, None) => anyhow::bail!("give --code CODE or --resend"),
        };
        Ok(Said::ok(format!("{said}\n")))
    })
}

pub fn login(target: &ProjectArgs) -> anyhow::Result<Said> {
    let config = target.load()?;
    observe::init(&config.logging);
    block_on(async {
        let credentials = Credentials::new(&config.upload).await?;
        Ok(Said::ok(match credentials.session().await? {
            Some(s) => {
                let expires = chrono::DateTime::<chrono::Utc>::from(s.expires);
                format!(
                    "sub: {}\nidentity id: {}\ncredentials expire: {}\n",
                    s.sub,
                    s.identity_id,
                    expires.to_rfc3339()
                )
            }
            None => "using the AWS SDK's default credential chain (upload.auth: default-chain)\n".into(),
        }))
    })
}
