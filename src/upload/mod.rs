//! The background uploader: Cognito credentials, S3 puts, and the worker that drains the queue.

pub mod cognito;
pub mod credentials;
pub mod s3;
pub mod signup;
pub mod worker;

pub use cognito::{secret_hash, AuthError, Cognito, Session};
pub use credentials::Credentials;
pub use s3::{PutError, Target};
pub use signup::{SignUp, SignUpError};
pub use worker::Uploader;
