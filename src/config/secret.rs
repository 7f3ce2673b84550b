//! Every secret the configuration names (the project secret, the HTTP bearer token, the Cognito
//! client secret and passwords) is read here, one way: from a file if one is named, else from an
//! environment variable; surrounding whitespace removed, empty refused.
//!
//! One rule matters because the project secret keys every pseudonym: moving it from the
//! environment into a file written by `echo` (which adds a newline) must not change a single
//! pseudonym. A secret is therefore text; spaces, tabs and line ends at either end are never part
//! of it. Never logged: errors name where a secret was looked for, not what it holds.

use std::path::Path;

use super::ConfigError;

/// Where one secret is: `key` is its configuration name (`http.token`), for messages.
#[derive(Debug, Clone, Copy)]
pub struct SecretSource<'a> {
    pub key: &'a str,
    pub env: Option<&'a str>,
    pub file: Option<&'a Path>,
}

impl SecretSource<'_> {
    /// The secret, or `None` when the configuration names no place for it. A place named but
    /// unreadable, unset or empty is an error: a secret never silently falls back to none.
    pub fn read(&self) -> Result<Option<String>, ConfigError> {
        let key = self.key;
        let (raw, from) = if let Some(file) = self.file {
            let bytes = std::fs::read(file)
                .map_err(|e| ConfigError::MissingSecret(format!("{key}_file {}: {e}", file.display())))?;
            let text = String::from_utf8(bytes).map_err(|_| {
                ConfigError::MissingSecret(format!("{key}_file {} does not hold UTF-8 text", file.display()))
            })?;
            (text, format!("{key}_file {}", file.display()))
        } else if let Some(var) = self.env {
            let text = std::env::var(var).map_err(|_| {
                ConfigError::MissingSecret(format!("{key}_env names ${var}, which is not set"))
            })?;
            (text, format!("${var} ({key}_env)"))
        } else {
            return Ok(None);
        };
        let secret = raw.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
        if secret.is_empty() {
            return Err(ConfigError::MissingSecret(format!("{from} is empty")));
        }
        Ok(Some(secret.to_string()))
    }

    /// As [`read`](Self::read), for a secret that must be at least `min` bytes long.
    pub fn read_at_least(&self, min: usize) -> Result<Option<String>, ConfigError> {
        let secret = self.read()?;
        if let Some(s) = &secret {
            if s.len() < min {
                return Err(ConfigError::MissingSecret(format!(
                    "{} holds fewer than {min} characters",
                    self.place()
                )));
            }
        }
        Ok(secret)
    }

    /// Where the secret is looked for, in the configuration's words.
    fn place(&self) -> String {
        match (self.file, self.env) {
            (Some(file), _) => format!("{}_file {}", self.key, file.display()),
            (None, Some(var)) => format!("${var} ({}_env)", self.key),
            (None, None) => self.key.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_and_the_environment_give_the_same_secret() {
        let d = tempfile::tempdir().unwrap();
        let value = "correct horse battery staple";
        // What `echo`, an editor and a Windows editor leave behind.
        for (i, content) in
            [format!("{value}\n"), format!("  {value}\r\n\n"), value.to_string()].iter().enumerate()
        {
            let file = d.path().join(format!("s{i}"));
            std::fs::write(&file, content).unwrap();
            let source = SecretSource { key: "project.secret", env: None, file: Some(&file) };
            assert_eq!(source.read().unwrap().as_deref(), Some(value), "{content:?}");
        }
        let var = "DAG_TEST_SECRET_RULE";
        std::env::set_var(var, format!("\t{value} \n"));
        let source = SecretSource { key: "project.secret", env: Some(var), file: None };
        assert_eq!(source.read().unwrap().as_deref(), Some(value));
        std::env::remove_var(var);
    }

    #[test]
    fn an_empty_unset_short_or_binary_secret_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = SecretSource { key: "http.token", env: None, file: Some(&empty) }.read().unwrap_err();
        assert!(e.to_string().contains("http.token_file") && e.to_string().contains("empty"), "{e}");
        let binary = d.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x41]).unwrap();
        let e = SecretSource { key: "k", env: None, file: Some(&binary) }.read().unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
        let e = SecretSource { key: "k", env: Some("DAG_TEST_SURELY_UNSET"), file: None }.read().unwrap_err();
        assert!(e.to_string().contains("$DAG_TEST_SURELY_UNSET"), "{e}");
        let short = d.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let e = SecretSource { key: "k", env: None, file: Some(&short) }.read_at_least(16).unwrap_err();
        assert!(e.to_string().contains("fewer than 16"), "{e}");
        assert_eq!(SecretSource { key: "k", env: None, file: None }.read().unwrap(), None);
    }
}
