//! API errors: a status, a stable code and a message, answered as JSON.
//!
//! The mapping from [`ManagerError`] is the one place that decides statuses:
//! 400 for input the caller can fix, 404 for unknown ids, 409 for conflicts
//! with the current state, 503 when the agent or a provider cannot serve
//! now, 500 only for failures on our side (a provider command failed).

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::api::ErrorBody;
use crate::journal::JournalError;
use crate::manager::ManagerError;
use crate::provider::ProviderError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        } else {
            tracing::info!(status = self.status.as_u16(), code = self.code, message = %self.message, "request refused");
        }
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        let (status, code) = match &e {
            ManagerError::NoSuchVolume(_) => (S::NOT_FOUND, "no_such_volume"),
            ManagerError::NoSuchProvider(_) => (S::NOT_FOUND, "no_such_provider"),
            ManagerError::NoSuchOrphan { .. } => (S::NOT_FOUND, "no_such_orphan"),
            ManagerError::AlreadyExists(_) => (S::CONFLICT, "already_exists"),
            ManagerError::InvalidId { .. } => (S::BAD_REQUEST, "invalid_id"),
            ManagerError::InvalidMeta(_) => (S::BAD_REQUEST, "invalid_meta"),
            ManagerError::InvalidInput(_) => (S::BAD_REQUEST, "invalid_input"),
            ManagerError::HasDependents { .. } => (S::CONFLICT, "has_dependents"),
            ManagerError::Busy(_) => (S::CONFLICT, "busy"),
            ManagerError::WrongKind { .. } => (S::CONFLICT, "wrong_kind"),
            ManagerError::VolumeLost(_) => (S::CONFLICT, "volume_lost"),
            ManagerError::Provider { error, .. } => match error {
                ProviderError::NotFound(_) => (S::NOT_FOUND, "provider_not_found"),
                ProviderError::AlreadyExists(_) => (S::CONFLICT, "already_exists"),
                ProviderError::Busy { .. } => (S::CONFLICT, "busy"),
                ProviderError::HasDependents { .. } => (S::CONFLICT, "has_dependents"),
                ProviderError::InvalidConfig(_) => (S::BAD_REQUEST, "invalid_config"),
                ProviderError::Suspended { .. } => (S::BAD_GATEWAY, "transfer_interrupted"),
                _ => (S::INTERNAL_SERVER_ERROR, "provider_failed"),
            },
            ManagerError::ProviderUnavailable { .. } => {
                (S::SERVICE_UNAVAILABLE, "provider_unavailable")
            }
            ManagerError::Journal(j) => match j {
                JournalError::RecordTooLarge { .. } => (S::BAD_REQUEST, "invalid_input"),
                _ => (S::SERVICE_UNAVAILABLE, "journal_unavailable"),
            },
            ManagerError::RecordRejected(_) => (S::SERVICE_UNAVAILABLE, "journal_unavailable"),
            ManagerError::Stream(_) => (S::BAD_GATEWAY, "stream_failed"),
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}
