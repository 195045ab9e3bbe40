//! API errors: a status, a stable code and a message, answered as JSON in
//! Flynn's error shape.
//!
//! The body is Flynn's `pkg/httphelper.JSONError`: `{"code", "message",
//! "detail"?, "retry"}` where `code` is one of Flynn's codes
//! (`object_not_found`, `object_exists`, `validation_error`, `conflict`,
//! ...), so Flynn's `IsObjectNotFoundError` and friends work, plus
//! `volmgr_code`, volmgr's finer code (`has_dependents`, `busy`, ...; the
//! README's table). The Flynn code is derived from volmgr's code and the
//! status in one place ([`flynn_code`]), so a new volmgr error gets a Flynn
//! code without a second table to keep in step.
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
    /// volmgr's code (`volmgr_code` on the wire).
    pub code: &'static str,
    pub message: String,
    /// Flynn's `detail`: `{"field": NAME}` for a validation error that
    /// names the request field at fault.
    pub field: Option<&'static str>,
}

/// Flynn's error code for volmgr's `code` answered with `status`
/// (`pkg/httphelper`'s codes; its table gives each a status, which the
/// agent's statuses agree with except `request_body_too_big`, 413 here and
/// 400 there, and the 502s, `unknown_error` here and 500 there).
pub fn flynn_code(status: StatusCode, code: &str) -> &'static str {
    match code {
        "already_exists" => return "object_exists",
        "bad_json" => return "syntax_error",
        "body_too_large" => return "request_body_too_big",
        "no_such_route" => return "not_found",
        _ => {}
    }
    match status.as_u16() {
        400 | 405 => "validation_error",
        401 => "unauthorized",
        404 => "object_not_found",
        409 => "conflict",
        412 => "precondition_failed",
        429 => "ratelimited",
        503 => "service_unavailable",
        _ => "unknown_error",
    }
}

/// Whether asking again later may succeed (Flynn's `retry`).
fn retryable(status: StatusCode, code: &str) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE
        || status == StatusCode::TOO_MANY_REQUESTS
        || matches!(
            code,
            "busy"
                | "transfer_interrupted"
                | "transfer_stalled"
                | "transfer_deadline"
                | "source_unreachable"
                | "source_stream_failed"
        )
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// Names the request field at fault (Flynn's `detail.field`).
    pub fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    /// Flynn's code for this error.
    pub fn flynn_code(&self) -> &'static str {
        flynn_code(self.status, self.code)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.flynn_code().to_owned(),
            message: self.message.clone(),
            detail: self
                .field
                .map(|field| serde_json::json!({ "field": field })),
            retry: retryable(self.status, self.code),
            volmgr_code: self.code.to_owned(),
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
        let (status, code, message) = (self.status.as_u16(), self.code, &self.message);
        match log_level(self.status) {
            tracing::Level::ERROR => {
                tracing::error!(status, code, error = %LogSafe(message), "request failed");
            }
            tracing::Level::WARN => {
                tracing::warn!(status, code, error = %LogSafe(message), "request failed");
            }
            _ => tracing::info!(status, code, error = %LogSafe(message), "request refused"),
        }
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer, Basic realm=\"volmgr\""),
            );
        }
        response
    }
}

/// An error's text as logged: it may quote the caller's input (serde names
/// an unknown field as it was sent), so controls, bidirectional controls
/// and line separators are escaped (`\u{2028}`).
struct LogSafe<'a>(&'a str);

impl std::fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c.is_control() || crate::validate::is_deceptive(c) {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// The level an error answer is logged at: expected states (503 starting,
/// stopping, a limit reached) and the caller's mistakes (4xx) are not
/// errors of the agent (INFO); a peer's or the disk's failure (502, 504,
/// 507) is a WARN; only a failure on our side (other 5xx) is an ERROR.
pub fn log_level(status: StatusCode) -> tracing::Level {
    match status.as_u16() {
        502 | 504 | 507 => tracing::Level::WARN,
        503 => tracing::Level::INFO,
        500.. => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        let (status, code, field) = match &e {
            ManagerError::NoSuchVolume(_) => (S::NOT_FOUND, "no_such_volume", None),
            ManagerError::NoSuchProvider(_) => (S::NOT_FOUND, "no_such_provider", None),
            ManagerError::NoSuchOrphan { .. } => (S::NOT_FOUND, "no_such_orphan", None),
            ManagerError::AlreadyExists(_) => (S::CONFLICT, "already_exists", Some("id")),
            ManagerError::InvalidId { .. } => (S::BAD_REQUEST, "invalid_id", Some("id")),
            ManagerError::InvalidMeta(_) => (S::BAD_REQUEST, "invalid_meta", Some("meta")),
            ManagerError::InvalidInput(_) => (S::BAD_REQUEST, "invalid_input", None),
            ManagerError::HasDependents { .. } => (S::CONFLICT, "has_dependents", None),
            ManagerError::Busy(_) | ManagerError::BeingRead { .. } => (S::CONFLICT, "busy", None),
            ManagerError::WrongKind { .. } => (S::CONFLICT, "wrong_kind", None),
            ManagerError::VolumeLost(_) => (S::CONFLICT, "volume_lost", None),
            ManagerError::Provider { error, .. } => match error {
                ProviderError::NotFound(_) => (S::NOT_FOUND, "provider_not_found", None),
                ProviderError::AlreadyExists(_) => (S::CONFLICT, "already_exists", None),
                ProviderError::Busy { .. } => (S::CONFLICT, "busy", None),
                ProviderError::HasDependents { .. } => (S::CONFLICT, "has_dependents", None),
                // A root another agent owns or runs on: the configuration
                // names the wrong root, like any other refused configuration.
                ProviderError::InvalidConfig(_)
                | ProviderError::ForeignRoot { .. }
                | ProviderError::RootInUse { .. } => {
                    (S::BAD_REQUEST, "invalid_config", Some("metadata"))
                }
                ProviderError::Suspended { .. } => (S::BAD_GATEWAY, "transfer_interrupted", None),
                // Stream bytes come from a source agent (a pull): its fault.
                ProviderError::Stream(_) => (S::BAD_GATEWAY, "bad_stream", None),
                ProviderError::NoSpace { .. } => (S::INSUFFICIENT_STORAGE, "no_space", None),
                // What a tenant put in the volume, not the agent's failure.
                ProviderError::UnsupportedContent(_) => (S::CONFLICT, "unsupported_content", None),
                // The volume's data, not the agent's failure.
                ProviderError::CapacityBelowUsage { .. } => {
                    (S::CONFLICT, "capacity_below_usage", None)
                }
                _ => (S::INTERNAL_SERVER_ERROR, "provider_failed", None),
            },
            ManagerError::ProviderUnavailable { .. } => {
                (S::SERVICE_UNAVAILABLE, "provider_unavailable", None)
            }
            ManagerError::Journal(j) => match j {
                JournalError::RecordTooLarge { .. } => (S::BAD_REQUEST, "invalid_input", None),
                _ => (S::SERVICE_UNAVAILABLE, "journal_unavailable", None),
            },
            ManagerError::RecordRejected(_) => {
                (S::SERVICE_UNAVAILABLE, "journal_unavailable", None)
            }
            ManagerError::StreamDoesNotFit { .. } => (S::CONFLICT, "stream_does_not_fit", None),
            ManagerError::Stream(_) => (S::BAD_GATEWAY, "stream_failed", None),
            _ => (S::INTERNAL_SERVER_ERROR, "internal", None),
        };
        ApiError {
            status,
            code,
            message,
            field,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new user's report: a `/healthz` probe during startup was logged at
    /// ERROR (`request failed status=503 code="starting"`).
    #[test]
    fn expected_states_are_not_logged_as_errors() {
        use tracing::Level;
        for (status, level) in [
            (503, Level::INFO),
            (400, Level::INFO),
            (404, Level::INFO),
            (409, Level::INFO),
            (429, Level::INFO),
            (502, Level::WARN),
            (504, Level::WARN),
            (507, Level::WARN),
            (500, Level::ERROR),
        ] {
            assert_eq!(
                log_level(StatusCode::from_u16(status).unwrap()),
                level,
                "{status}"
            );
        }
    }

    #[test]
    fn out_of_space_is_507_naming_what_did_not_fit() {
        let e = ApiError::from(ManagerError::Provider {
            provider: "default".into(),
            error: ProviderError::NoSpace {
                what: "the receive into t".into(),
                detail: "needs 400 MB, 12 MB free".into(),
            },
        });
        assert_eq!((e.status.as_u16(), e.code), (507, "no_space"));
        assert!(
            e.message
                .contains("not enough space for the receive into t")
                && e.message.contains("12 MB free"),
            "{}",
            e.message
        );
        assert_eq!(e.body().code, "unknown_error");
    }

    #[test]
    fn flynn_codes_follow_httphelper_and_volmgr_codes_ride_along() {
        let cases = [
            (404, "no_such_volume", "object_not_found", false),
            (409, "already_exists", "object_exists", false),
            (507, "no_space", "unknown_error", false),
            (502, "bad_stream", "unknown_error", false),
            (409, "has_dependents", "conflict", false),
            (409, "busy", "conflict", true),
            (400, "invalid_id", "validation_error", false),
            (400, "bad_json", "syntax_error", false),
            (413, "body_too_large", "request_body_too_big", false),
            (401, "unauthorized", "unauthorized", false),
            (404, "no_such_route", "not_found", false),
            (502, "transfer_interrupted", "unknown_error", true),
            (500, "provider_failed", "unknown_error", false),
            (503, "starting", "service_unavailable", true),
        ];
        for (status, code, flynn, retry) in cases {
            let e = ApiError::new(StatusCode::from_u16(status).unwrap(), code, "m");
            let body = e.body();
            assert_eq!(
                (body.code.as_str(), body.retry, body.volmgr_code.as_str()),
                (flynn, retry, code),
                "{status} {code}"
            );
        }
        let body = ApiError::bad_request("invalid_type", "m")
            .field("type")
            .body();
        assert_eq!(body.detail, Some(serde_json::json!({"field": "type"})));
    }

    #[test]
    fn provider_space_and_stream_errors_are_507_and_502_not_500() {
        let of = |error| {
            ApiError::from(ManagerError::Provider {
                provider: "default".into(),
                error,
            })
        };
        let full = of(ProviderError::NoSpace {
            what: "receive".into(),
            detail: "free 1 MiB, need 2 MiB".into(),
        });
        assert_eq!((full.status.as_u16(), full.code), (507, "no_space"));
        let bad = of(ProviderError::Stream("path component too long".into()));
        assert_eq!((bad.status.as_u16(), bad.code), (502, "bad_stream"));
    }
}
