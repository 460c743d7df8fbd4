//! The `dynamodb` app manager.

use std::{collections::HashMap, time::Duration};

use aws_sdk_dynamodb::{
    Client,
    config::{BehaviorVersion, Credentials, Region, timeout::TimeoutConfig},
    types::{
        AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
        KeyType, Projection, ProjectionType, ReturnValue, ScalarAttributeType,
    },
};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use serde_json::{Map, Value};
use sockhost_aws::sdk_error;
use sockhost_plugin_api::{
    PluginError,
    sdk::{AppManagerDriver, UpdateOutcome, apps::record},
};

use crate::{
    config::DynamoConfig,
    item::{to_attribute, to_item, to_record},
};

/// The attribute conditional writes compare and bump; an item without it is at version 0.
const VERSION: &str = "version";

/// The reference's index on `key`.
const KEY_INDEX: &str = "KeyIndex";
/// Ids one list request may gather from the scan at most; a table with more answers an error
/// rather than hold them all.
const MAX_LISTED_IDS: usize = 100_000;

fn build_error(error: impl std::fmt::Display) -> PluginError {
    PluginError::internal(format!("dynamodb request: {error}"))
}

/// Apps in a DynamoDB table.
pub struct DynamoApps {
    client: Client,
    table: String,
}

impl std::fmt::Debug for DynamoApps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoApps").field("table", &self.table).finish_non_exhaustive()
    }
}

impl DynamoApps {
    /// Make the client, and the table (with its `KeyIndex`) if it does not exist. Any failure
    /// is a start-up error.
    pub async fn connect(config: DynamoConfig) -> Result<Self, PluginError> {
        let (key, secret, token) = config.credentials()?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut builder = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region()))
            .credentials_provider(Credentials::new(key, secret, token, None, "sockhost"))
            .http_client(http)
            .timeout_config(TimeoutConfig::builder().operation_timeout(config.timeout()).build());
        if let Some(endpoint) = config.endpoint() {
            builder = builder.endpoint_url(endpoint);
        }
        let apps =
            Self { client: Client::from_conf(builder.build()), table: config.table().into() };
        apps.ensure_table().await.map_err(|e| PluginError::config(e.message.to_string()))?;
        tracing::info!(table = %apps.table, region = %config.region(), "Apps from DynamoDB.");
        Ok(apps)
    }

    async fn ensure_table(&self) -> Result<(), PluginError> {
        let described = self.client.describe_table().table_name(&self.table).send().await;
        match described {
            Ok(_) => return Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => {
            }
            Err(e) => return Err(sdk_error("dynamodb", "DescribeTable", &e)),
        }
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)
        };
        let hash = |name: &str| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(KeyType::Hash)
                .build()
                .map_err(build_error)
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(KEY_INDEX)
            .key_schema(hash("key")?)
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
            .map_err(build_error)?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attribute("id")?)
            .attribute_definitions(attribute("key")?)
            .key_schema(hash("id")?)
            .global_secondary_indexes(index)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {}
            // A node starting at the same time created it first.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {}
            Err(e) => return Err(sdk_error("dynamodb", "CreateTable", &e)),
        }
        // A new table is usable once ACTIVE.
        for _ in 0..60 {
            let table = self.client.describe_table().table_name(&self.table).send().await;
            let active = table.as_ref().ok().and_then(|t| t.table()).and_then(|t| t.table_status());
            if active.is_some_and(|s| s.as_str() == "ACTIVE") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(PluginError::unavailable(format!("table {} did not become ACTIVE", self.table)))
    }

    /// The id of the app with this key, if any.
    async fn id_of_key(&self, key: &str) -> Result<Option<String>, PluginError> {
        let found = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(KEY_INDEX)
            .key_condition_expression("#k = :k")
            .expression_attribute_names("#k", "key")
            .expression_attribute_values(":k", AttributeValue::S(key.into()))
            .limit(1)
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb", "Query", &e))?;
        Ok(found
            .items()
            .first()
            .and_then(|item| item.get("id"))
            .and_then(|id| id.as_s().ok())
            .cloned())
    }

    /// Refuse a record whose key belongs to another app.
    async fn check_key(&self, record: &Map<String, Value>, id: &str) -> Result<(), PluginError> {
        let Some(key) = record.get("key").and_then(Value::as_str) else { return Ok(()) };
        match self.id_of_key(key).await? {
            Some(other) if other != id => Err(PluginError::rejected("an app with this key exists")),
            _ => Ok(()),
        }
    }

    async fn put(&self, record: &Map<String, Value>, condition: &str) -> Result<bool, PluginError> {
        let outcome = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(record)))
            .condition_expression(condition)
            .send()
            .await;
        match outcome {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("dynamodb", "PutItem", &e)),
        }
    }
}

impl DynamoApps {
    /// Whether an item with this id exists (a consistent read of its id only).
    async fn exists(&self, id: &str) -> Result<bool, PluginError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(id.into()))
            .projection_expression("#i")
            .expression_attribute_names("#i", "id")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb", "GetItem", &e))?;
        Ok(found.item().is_some_and(|item| !item.is_empty()))
    }
}

impl AppManagerDriver for DynamoApps {
    async fn find_by_id(&self, id: &str) -> Result<Option<String>, PluginError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(id.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb", "GetItem", &e))?;
        Ok(found.item().cloned().map(|item| to_record(item).to_string()))
    }

    async fn find_by_key(&self, key: &str) -> Result<Option<String>, PluginError> {
        // The index is eventually consistent: the item itself is read by id, consistently.
        match self.id_of_key(key).await? {
            Some(id) => self.find_by_id(&id).await,
            None => Ok(None),
        }
    }

    async fn list(&self, after: &str, limit: u32) -> Result<Vec<String>, PluginError> {
        // A scan has no order: gather the ids (only), a page at a time, then read the page's
        // apps in id order.
        let mut ids = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .projection_expression("#i")
                .expression_attribute_names("#i", "id")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("dynamodb", "Scan", &e))?;
            ids.extend(
                page.items()
                    .iter()
                    .filter_map(|item| item.get("id").and_then(|id| id.as_s().ok()))
                    .filter(|id| id.as_str() > after)
                    .cloned(),
            );
            if ids.len() > MAX_LISTED_IDS {
                return Err(PluginError::rejected(format!(
                    "more than {MAX_LISTED_IDS} apps to list; page with a later `after`"
                )));
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        ids.sort();
        let mut apps = Vec::new();
        for id in ids.iter().take(limit as usize) {
            if let Some(app) = self.find_by_id(id).await? {
                apps.push(app);
            }
        }
        Ok(apps)
    }

    async fn create(&self, app: &str) -> Result<(), PluginError> {
        let (record, id) = record(app)?;
        // A write is the operator adding apps: a table that was deleted (or a local server
        // restarted empty) is made again, as at start. Writes are rare; the check is one call.
        self.ensure_table().await?;
        self.check_key(&record, &id).await?;
        if self.put(&record, "attribute_not_exists(id)").await? {
            Ok(())
        } else {
            Err(PluginError::rejected("an app with this id exists"))
        }
    }

    async fn update(&self, app: &str) -> Result<bool, PluginError> {
        let (mut record, id) = record(app)?;
        self.ensure_table().await?;
        self.check_key(&record, &id).await?;
        // The whole item is replaced: its version moves past the one read, so a conditional
        // write that read the item before this one does not overwrite it.
        let read = record.get(VERSION).and_then(Value::as_u64).unwrap_or(0);
        record.insert(VERSION.into(), Value::from(read.saturating_add(1)));
        self.put(&record, "attribute_exists(id)").await
    }

    async fn update_if(&self, changes: &str, expected: u64) -> Result<UpdateOutcome, PluginError> {
        let (record, id) = record(changes)?;
        self.check_key(&record, &id).await?;
        // Only the fields given are set (a null removes one), the version bumped, all under
        // one condition on the version read: DynamoDB applies it atomically per item.
        let mut set = vec!["#v = :next".to_string()];
        let mut remove = Vec::new();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(id.clone()))
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_values(":next", AttributeValue::N((expected + 1).to_string()));
        let fields = record.iter().filter(|(k, _)| !["id", VERSION].contains(&k.as_str()));
        for (n, (name, value)) in fields.enumerate() {
            update = update.expression_attribute_names(format!("#f{n}"), name);
            if value.is_null() {
                remove.push(format!("#f{n}"));
            } else {
                set.push(format!("#f{n} = :f{n}"));
                update = update.expression_attribute_values(format!(":f{n}"), to_attribute(value));
            }
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let condition = if expected == 0 {
            "attribute_exists(id) AND (attribute_not_exists(#v) OR #v = :expected)"
        } else {
            "attribute_exists(id) AND #v = :expected"
        };
        let outcome = update
            .update_expression(expression)
            .condition_expression(condition)
            .expression_attribute_values(":expected", AttributeValue::N(expected.to_string()))
            .send()
            .await;
        match outcome {
            Ok(_) => Ok(UpdateOutcome::Updated),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(if self.exists(&id).await? {
                    UpdateOutcome::Conflict
                } else {
                    UpdateOutcome::NotFound
                })
            }
            Err(e) => Err(sdk_error("dynamodb", "UpdateItem", &e)),
        }
    }

    async fn delete(&self, id: &str) -> Result<bool, PluginError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(id.into()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| sdk_error("dynamodb", "DeleteItem", &e))?;
        Ok(deleted.attributes().is_some_and(|a| !a.is_empty()))
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error("dynamodb", "DescribeTable", &e))
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        Ok(())
    }
}
