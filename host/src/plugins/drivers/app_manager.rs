//! The app manager handle, with its conditional write.

use sockhost_plugin_api::{
    AppManagerBox, ErrorCode, PluginError,
    abi::{RStr, RString},
};

use super::{DriverError, call::Named};

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// Written.
    Updated,
    /// No such app.
    NotFound,
    /// Another write came first; nothing was written.
    Conflict,
}

/// The app manager, as the host uses it.
#[derive(Debug)]
pub struct AppManager(pub(super) Named<AppManagerBox>);

impl AppManager {
    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The app with this id, as the driver's JSON record.
    pub async fn find_by_id(&self, id: &str) -> Result<Option<String>, DriverError> {
        let found = self.0.call(self.0.inner.find_by_id(RStr::from_str(id))).await?;
        Ok(found.into_option().map(RString::into_string))
    }

    /// The app with this key, as the driver's JSON record.
    pub async fn find_by_key(&self, key: &str) -> Result<Option<String>, DriverError> {
        let found = self.0.call(self.0.inner.find_by_key(RStr::from_str(key))).await?;
        Ok(found.into_option().map(RString::into_string))
    }

    /// At most `limit` records in id order after `after`.
    pub async fn list(&self, after: &str, limit: u32) -> Result<Vec<String>, DriverError> {
        let page = self.0.call(self.0.inner.list(RStr::from_str(after), limit)).await?;
        Ok(page.into_iter().map(RString::into_string).collect())
    }

    /// Add a record.
    pub async fn create(&self, app: &str) -> Result<(), DriverError> {
        self.0.call(self.0.inner.create(RStr::from_str(app))).await
    }

    /// Replace a record; whether it existed.
    pub async fn update(&self, app: &str) -> Result<bool, DriverError> {
        self.0.call(self.0.inner.update(RStr::from_str(app))).await
    }

    /// Write the fields `changed` of the whole record `app` only if the stored one is still at
    /// version `expected` (through `update` with [`IF_VERSION`](sockhost_plugin_api::IF_VERSION)
    /// and [`CHANGED`](sockhost_plugin_api::CHANGED), so a driver built before conditional
    /// writes, which replaces the record whole and unconditionally, keeps working).
    pub async fn update_if(
        &self,
        app: &str,
        changed: &[String],
        expected: u64,
    ) -> Result<Conditional, DriverError> {
        let mut record: serde_json::Map<String, serde_json::Value> = serde_json::from_str(app)
            .map_err(|e| self.0.err(PluginError::rejected(format!("not a JSON object: {e}"))))?;
        record.insert(sockhost_plugin_api::IF_VERSION.into(), expected.into());
        record.insert(sockhost_plugin_api::CHANGED.into(), changed.into());
        let record = serde_json::Value::Object(record).to_string();
        match self.0.call(self.0.inner.update(RStr::from_str(&record))).await {
            Ok(true) => Ok(Conditional::Updated),
            Ok(false) => Ok(Conditional::NotFound),
            Err(DriverError::Plugin { error, .. }) if error.code == ErrorCode::CONFLICT => {
                Ok(Conditional::Conflict)
            }
            Err(error) => Err(error),
        }
    }

    /// Remove a record; whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, DriverError> {
        self.0.call(self.0.inner.delete(RStr::from_str(id))).await
    }

    /// Whether the backend answers.
    pub async fn health(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.health()).await
    }

    /// Release the backend.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.shutdown()).await
    }
}
