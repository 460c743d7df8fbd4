//! The app manager: where the apps live when they are not in the configuration file (a
//! database the operator and the admin API edit while the servers run).

use abi_stable::{
    sabi_trait,
    std_types::{RBox, ROption, RStr, RString, RVec},
};
use async_ffi::FfiFuture;

use crate::PResult;

/// A store of apps.
///
/// An app crosses the boundary as one JSON object with the reference's field names (`id`,
/// `key`, `secret`, `enabled`, `max_connections`, `enable_client_messages`, the `max_*` limits,
/// `webhooks`, ...), so fields can be added without a new ABI generation. The host treats every
/// record as hostile: it bounds its size, checks every field, and ignores the fields it does
/// not know. Drivers store what they are given and answer it back; they interpret only `id` and
/// `key`.
#[sabi_trait]
pub trait AppManager: Send + Sync {
    /// The app with this id, or none.
    fn find_by_id(&self, id: RStr<'_>) -> FfiFuture<PResult<ROption<RString>>>;

    /// The app with this key, or none.
    fn find_by_key(&self, key: RStr<'_>) -> FfiFuture<PResult<ROption<RString>>>;

    /// At most `limit` apps in ascending id order, starting after the id `after` (from the
    /// first when empty). Fewer than `limit` means the end.
    fn list(&self, after: RStr<'_>, limit: u32) -> FfiFuture<PResult<RVec<RString>>>;

    /// Add an app. [`ErrorCode::REJECTED`](crate::ErrorCode::REJECTED) when its id or key is
    /// taken.
    fn create(&self, app: RStr<'_>) -> FfiFuture<PResult<()>>;

    /// Replace the app with the record's id; whether it existed (none is created).
    /// [`ErrorCode::REJECTED`](crate::ErrorCode::REJECTED) when the new key is another app's.
    fn update(&self, app: RStr<'_>) -> FfiFuture<PResult<bool>>;

    /// Remove the app with this id; whether it existed.
    fn delete(&self, id: RStr<'_>) -> FfiFuture<PResult<bool>>;

    /// Whether the backend answers now.
    fn health(&self) -> FfiFuture<PResult<()>>;

    /// Release the backend; later calls answer `UNAVAILABLE`. Idempotent.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> FfiFuture<PResult<()>>;
}

/// An app manager as the host owns it.
pub type AppManagerBox = AppManager_TO<'static, RBox<()>>;
