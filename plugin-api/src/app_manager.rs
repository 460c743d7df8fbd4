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
    /// Conditional when the record has [`IF_VERSION`]. Every write makes the stored `version`
    /// one more than it was, so a conditional write that read the record before another write
    /// does not overwrite it.
    fn update(&self, app: RStr<'_>) -> FfiFuture<PResult<bool>>;

    /// Remove the app with this id; whether it existed.
    fn delete(&self, id: RStr<'_>) -> FfiFuture<PResult<bool>>;

    /// Whether the backend answers now.
    fn health(&self) -> FfiFuture<PResult<()>>;

    /// Release the backend; later calls answer `UNAVAILABLE`. Idempotent.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> FfiFuture<PResult<()>>;
}

/// The key that makes [`AppManager::update`] conditional: when the record has it (a whole
/// number, the `version` the record was read at), the driver writes the record only if the
/// stored one is still at that version (a record without one is at version 0), makes it
/// `version + 1`, and answers [`ErrorCode::CONFLICT`](crate::ErrorCode::CONFLICT) when another
/// write came first; the key itself is never stored. Conditional writes travel inside
/// `update`'s record rather than as a method of their own so that the vtable keeps its layout:
/// plugins built before them keep loading with their app managers (a driver that does not
/// know the key writes the record as it always did).
pub const IF_VERSION: &str = "$if_version";

/// With [`IF_VERSION`], the names of the fields the write changes (a JSON array): a driver
/// that writes field by field writes only these, so that what it writes beside them can never
/// be a stale copy; the rest of the record is there for drivers that replace it whole.
pub const CHANGED: &str = "$changed";

/// An app manager as the host owns it.
pub type AppManagerBox = AppManager_TO<'static, RBox<()>>;
