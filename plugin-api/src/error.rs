//! The one error type that crosses the plugin boundary.

use std::fmt;

use abi_stable::{StableAbi, std_types::RString};

/// What went wrong, as a number that stays meaningful across ABI versions.
///
/// A plain integer rather than an enum, so new codes can be added in a minor version without
/// changing the layout: a host that meets a code it does not know treats it as [`ErrorCode::INTERNAL`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// The driver's configuration is invalid; the message names the field.
    pub const CONFIG: Self = Self(1);
    /// The backend cannot be reached right now; retrying later may work.
    pub const UNAVAILABLE: Self = Self(2);
    /// The backend did not answer in time.
    pub const TIMEOUT: Self = Self(3);
    /// The backend refused the operation (bad argument, limit, permission).
    pub const REJECTED: Self = Self(4);
    /// A non-blocking call found its queue full; the caller decides whether to drop or wait.
    pub const BACKPRESSURE: Self = Self(5);
    /// The plugin panicked; the panic was caught at the boundary.
    pub const PANICKED: Self = Self(6);
    /// Anything else.
    pub const INTERNAL: Self = Self(7);
    /// A conditional write found the record changed since it was read (see
    /// [`IF_VERSION`](crate::IF_VERSION)); nothing was written. Read again and retry.
    pub const CONFLICT: Self = Self(8);

    /// A short lowercase name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::CONFIG => "config",
            Self::UNAVAILABLE => "unavailable",
            Self::TIMEOUT => "timeout",
            Self::REJECTED => "rejected",
            Self::BACKPRESSURE => "backpressure",
            Self::PANICKED => "panicked",
            Self::CONFLICT => "conflict",
            _ => "internal",
        }
    }

    /// Whether trying the same operation again later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::UNAVAILABLE | Self::TIMEOUT | Self::BACKPRESSURE)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

/// An error answered by a plugin: a code to branch on and a message for humans.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// One line, lowercase, no trailing period; for configuration errors it names the field.
    pub message: RString,
}

impl PluginError {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: RString::from(message.into()) }
    }

    /// A conditional write lost to another.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::CONFLICT, message)
    }

    /// A configuration error; `message` should name the field.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::CONFIG, message)
    }

    /// The backend is unreachable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNAVAILABLE, message)
    }

    /// The backend did not answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TIMEOUT, message)
    }

    /// The backend refused the operation.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::REJECTED, message)
    }

    /// A bounded queue is full.
    pub fn backpressure(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BACKPRESSURE, message)
    }

    /// A panic was caught at the boundary.
    pub fn panicked(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PANICKED, message)
    }

    /// Anything else.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INTERNAL, message)
    }

    /// The message as a string slice.
    pub fn message(&self) -> &str {
        self.message.as_str()
    }
}

impl fmt::Debug for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PluginError({:?}: {})", self.code, self.message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for PluginError {}

/// The result type of every fallible call across the boundary.
pub type PResult<T> = abi_stable::std_types::RResult<T, PluginError>;
