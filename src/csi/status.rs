//! Manager errors to the gRPC codes the CSI spec prescribes.
//!
//! `NOT_FOUND` for a missing volume, `ALREADY_EXISTS` for a taken name,
//! `INVALID_ARGUMENT` for bad input, `OUT_OF_RANGE` for a capacity below
//! what the volume holds, `FAILED_PRECONDITION` for dependents,
//! lost volumes, content the provider cannot carry and a volume or snapshot
//! the provider found in use (the spec's "Volume in use" and "Snapshot in
//! use": a process inside it; it may go once the process has left),
//! ABORTED while another operation on the volume is in flight,
//! `RESOURCE_EXHAUSTED` when the provider is out of space, UNAVAILABLE when
//! the provider or journal is, INTERNAL for the rest. Messages carry the
//! manager's own text.

use tonic::Status;

use crate::manager::ManagerError;
use crate::provider::ProviderError;

/// Whether a provider failure means "out of space" (ENOSPC, EDQUOT, or a
/// command saying so), which CSI reports as `RESOURCE_EXHAUSTED`.
pub fn out_of_space(e: &ProviderError) -> bool {
    match e {
        ProviderError::NoSpace { .. } => true,
        ProviderError::Io { source, .. } => {
            matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        }
        ProviderError::Command { stderr, .. } => {
            let s = stderr.to_ascii_lowercase();
            s.contains("out of space")
                || s.contains("no space left")
                || s.contains("quota exceeded")
                || s.contains("disk quota")
        }
        _ => false,
    }
}

/// The status of a manager error.
// A `map_err` adapter: it takes the error the way `map_err` hands it over.
#[allow(clippy::needless_pass_by_value)]
pub fn from_manager(e: ManagerError) -> Status {
    let message = e.to_string();
    match e {
        ManagerError::NoSuchVolume(_) | ManagerError::NoSuchOrphan { .. } => {
            Status::not_found(message)
        }
        ManagerError::NoSuchProvider(_)
        | ManagerError::InvalidId { .. }
        | ManagerError::InvalidMeta(_)
        | ManagerError::InvalidInput(_)
        | ManagerError::WrongKind { .. } => Status::invalid_argument(message),
        ManagerError::AlreadyExists(_) => Status::already_exists(message),
        ManagerError::HasDependents { .. }
        | ManagerError::VolumeLost(_)
        | ManagerError::StreamDoesNotFit { .. }
        | ManagerError::Provider {
            error: ProviderError::UnsupportedContent(_) | ProviderError::Busy { .. },
            ..
        } => Status::failed_precondition(message),
        ManagerError::Busy(_) | ManagerError::BeingRead { .. } => Status::aborted(message),
        ManagerError::Provider {
            error: ProviderError::CapacityBelowUsage { .. },
            ..
        } => Status::out_of_range(message),
        ManagerError::Provider { ref error, .. } if out_of_space(error) => {
            Status::resource_exhausted(message)
        }
        ManagerError::ProviderUnavailable { .. } | ManagerError::Journal(_) => {
            Status::unavailable(message)
        }
        _ => Status::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_manager_error_gets_the_code_the_spec_names() {
        let cases = [
            (ManagerError::NoSuchVolume("v".into()), Code::NotFound),
            (ManagerError::AlreadyExists("v".into()), Code::AlreadyExists),
            (ManagerError::Busy("v".into()), Code::Aborted),
            (
                ManagerError::HasDependents {
                    id: "v".into(),
                    dependents: vec!["s".into()],
                },
                Code::FailedPrecondition,
            ),
            (ManagerError::InvalidMeta("x".into()), Code::InvalidArgument),
            (
                ManagerError::Provider {
                    provider: "p".into(),
                    error: ProviderError::io(
                        "writing",
                        std::io::Error::from_raw_os_error(libc::ENOSPC),
                    ),
                },
                Code::ResourceExhausted,
            ),
            (
                ManagerError::Provider {
                    provider: "p".into(),
                    error: ProviderError::Command {
                        command: "zfs create".into(),
                        status: "1".into(),
                        stderr: "cannot create 'p/v': out of space".into(),
                    },
                },
                Code::ResourceExhausted,
            ),
            (
                ManagerError::Provider {
                    provider: "p".into(),
                    error: ProviderError::Other("boom".into()),
                },
                Code::Internal,
            ),
            (
                ManagerError::Provider {
                    provider: "p".into(),
                    error: ProviderError::CapacityBelowUsage {
                        what: "data volume v".into(),
                        used: 2,
                        capacity: 1,
                    },
                },
                Code::OutOfRange,
            ),
            (
                ManagerError::Provider {
                    provider: "p".into(),
                    error: ProviderError::Busy {
                        what: "snapshot s".into(),
                        cause: "in use".into(),
                    },
                },
                Code::FailedPrecondition,
            ),
            (ManagerError::Internal("x".into()), Code::Internal),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            assert_eq!(from_manager(e).code(), code, "{text}");
        }
    }
}
