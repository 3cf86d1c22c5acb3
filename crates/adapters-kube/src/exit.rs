//! The exec status channel: what the `Status` on channel 3 says about how the command ended.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

/// How an exec stream ended, before anything else (the pod's state) is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The status carried an exit code (0 for `Success`).
    Exited(i32),
    /// A `Failure` status without an exit code: the runtime failed (container gone, exec refused).
    Failure(String),
    /// The stream ended without any status: nothing is known about the exit.
    NoStatus,
}

/// Reads the status the exec stream ended with (`None`: it ended without one).
pub(crate) fn stream_end(status: Option<Status>) -> StreamEnd {
    let Some(status) = status else { return StreamEnd::NoStatus };
    match (status.status.as_deref(), status.reason.as_deref()) {
        (Some("Success"), _) => StreamEnd::Exited(0),
        (Some("Failure"), Some("NonZeroExitCode")) => match exit_code(&status) {
            Some(code) => StreamEnd::Exited(code),
            None => StreamEnd::Failure(format!("unreadable exit code in: {}", describe(&status))),
        },
        (Some("Failure"), _) => StreamEnd::Failure(describe(&status)),
        _ => StreamEnd::Failure(format!("status without an outcome: {}", describe(&status))),
    }
}

/// The exit code of a `NonZeroExitCode` status: the `ExitCode` cause's message, a decimal.
fn exit_code(status: &Status) -> Option<i32> {
    let causes = status.details.as_ref()?.causes.as_ref()?;
    let cause = causes.iter().find(|c| c.reason.as_deref() == Some("ExitCode"))?;
    cause.message.as_deref()?.trim().parse().ok()
}

fn describe(status: &Status) -> String {
    let reason = status.reason.as_deref().unwrap_or_default();
    let message = status.message.as_deref().unwrap_or_default();
    match (reason, message) {
        ("", "") => "the exec failed without a message".to_owned(),
        ("", message) => message.to_owned(),
        (reason, "") => reason.to_owned(),
        (reason, message) => format!("{reason}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse(json: &str) -> Option<Status> {
        Some(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn success_is_exit_zero() {
        assert_eq!(stream_end(parse(r#"{"metadata":{},"status":"Success"}"#)), StreamEnd::Exited(0));
    }

    #[test]
    fn non_zero_exit_codes_come_from_the_exit_code_cause() {
        // As the apiserver's v5 stream translator sends it.
        let translator = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: command terminated with exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(stream_end(parse(translator)), StreamEnd::Exited(3));
        // As a kubelet with containerd sends it over v4.
        let kubelet = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 137], exit code 137","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"137"}]}}"#;
        assert_eq!(stream_end(parse(kubelet)), StreamEnd::Exited(137));
    }

    #[test]
    fn a_failure_without_exit_code_is_not_an_exit() {
        let internal = r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: unable to upgrade connection: container not found (\"main\")","reason":"InternalError","details":{"causes":[{"message":"unable to upgrade connection: container not found (\"main\")"}]},"code":500}"#;
        let StreamEnd::Failure(why) = stream_end(parse(internal)) else { panic!() };
        assert!(why.starts_with("InternalError: Internal error occurred"), "{why}");
        let garbled = r#"{"metadata":{},"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"x"}]}}"#;
        assert!(matches!(stream_end(parse(garbled)), StreamEnd::Failure(_)));
        assert!(matches!(stream_end(parse(r#"{"metadata":{}}"#)), StreamEnd::Failure(_)));
    }

    #[test]
    fn no_status_is_never_an_exit() {
        assert_eq!(stream_end(None), StreamEnd::NoStatus);
    }
}
