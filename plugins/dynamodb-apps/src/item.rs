//! Items and the host's JSON records, both ways.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Map, Number, Value};

/// The reference's JSON fields: read back nested when stored as JSON text.
const JSON_FIELDS: [&str; 4] =
    ["webhooks", "allowed_origins", "channel_delta_compression", "policy"];

/// An item as the JSON record the host reads.
pub fn to_record(item: HashMap<String, AttributeValue>) -> Value {
    let record = item
        .into_iter()
        .map(|(name, value)| {
            let json = JSON_FIELDS.contains(&name.as_str());
            (name, to_json(value, json))
        })
        .collect::<Map<String, Value>>();
    Value::Object(record)
}

fn to_json(value: AttributeValue, json_field: bool) -> Value {
    match value {
        AttributeValue::S(text) if json_field => {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        AttributeValue::S(text) => Value::String(text),
        AttributeValue::N(number) => number
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| {
                number
                    .parse::<f64>()
                    .map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number))
            })
            .unwrap_or(Value::Null),
        AttributeValue::Bool(b) => Value::Bool(b),
        AttributeValue::L(list) => {
            Value::Array(list.into_iter().map(|v| to_json(v, false)).collect())
        }
        AttributeValue::M(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, to_json(v, false))).collect())
        }
        // NULL, binary and sets are not parts of an app.
        _ => Value::Null,
    }
}

/// A record's fields as an item (nulls left out: an absent attribute is an unset field).
pub fn to_item(record: &Map<String, Value>) -> HashMap<String, AttributeValue> {
    record.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), to_attribute(v))).collect()
}

/// One JSON value as an attribute.
pub fn to_attribute(value: &Value) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(list) => AttributeValue::L(list.iter().map(to_attribute).collect()),
        Value::Object(map) => {
            AttributeValue::M(map.iter().map(|(k, v)| (k.clone(), to_attribute(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_the_round_trip() {
        let record = serde_json::json!({
            "id": "1", "key": "k", "enabled": true, "max_connections": 5,
            "webhooks": [{ "url": "https://example.com", "event_types": ["channel_occupied"] }],
        });
        let item = to_item(record.as_object().unwrap());
        assert_eq!(to_record(item), record);
    }

    #[test]
    fn json_fields_stored_as_text_are_read_nested() {
        let item = HashMap::from([("webhooks".to_string(), AttributeValue::S("[]".into()))]);
        assert_eq!(to_record(item), serde_json::json!({ "webhooks": [] }));
    }
}
