//! The input-schema subset: `type`, `properties`, `required`, `items`,
//! `enum` (and `description` for people), plus [`validate_input`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{excerpt, kind_of, push_index, push_key, ValidationError};

/// A JSON type name of the schema subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaType {
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// A JSON string.
    String,
    /// Any JSON number.
    Number,
    /// A number with no fractional part.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// `null`.
    Null,
}

impl SchemaType {
    fn name(self) -> &'static str {
        match self {
            SchemaType::Object => "object",
            SchemaType::Array => "array",
            SchemaType::String => "string",
            SchemaType::Number => "number",
            SchemaType::Integer => "integer",
            SchemaType::Boolean => "boolean",
            SchemaType::Null => "null",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            SchemaType::Object => value.is_object(),
            SchemaType::Array => value.is_array(),
            SchemaType::String => value.is_string(),
            SchemaType::Number => value.is_number(),
            SchemaType::Integer => {
                value.is_i64()
                    || value.is_u64()
                    || value.as_f64().is_some_and(|number| number.fract() == 0.0)
            }
            SchemaType::Boolean => value.is_boolean(),
            SchemaType::Null => value.is_null(),
        }
    }
}

/// A schema of the supported subset; absent keywords accept anything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSchema {
    /// Required JSON type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub schema_type: Option<SchemaType>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Schemas of object properties (only checked when present in the value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, InputSchema>,
    /// Properties an object must have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    /// Schema of every array element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Box<InputSchema>>,
    /// The value must equal one of these.
    #[serde(rename = "enum", default, skip_serializing_if = "Option::is_none")]
    pub enum_values: Option<Vec<Value>>,
}

const SCHEMA_KEYWORDS: [&str; 6] = [
    "type",
    "description",
    "properties",
    "required",
    "items",
    "enum",
];
const TYPE_NAMES: [&str; 7] = [
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Structural check of a raw schema at `path` (e.g. `$.input`).
pub(crate) fn check_schema_shape(value: &Value, path: &str, errors: &mut Vec<ValidationError>) {
    let Value::Object(object) = value else {
        errors.push(ValidationError::new(
            path,
            format!(
                "expected a schema object, found {} {}",
                kind_of(value),
                excerpt(value)
            ),
        ));
        return;
    };
    for (key, keyword_value) in object {
        let keyword_path = push_key(path, key);
        match key.as_str() {
            "type" => {
                let known = keyword_value
                    .as_str()
                    .is_some_and(|name| TYPE_NAMES.contains(&name));
                if !known {
                    errors.push(ValidationError::new(
                        keyword_path,
                        format!(
                            "unknown schema type {}; expected one of: {}",
                            excerpt(keyword_value),
                            TYPE_NAMES.join(", ")
                        ),
                    ));
                }
            }
            "description" => {
                if !keyword_value.is_string() {
                    errors.push(ValidationError::new(keyword_path, "expected a string"));
                }
            }
            "properties" => match keyword_value {
                Value::Object(properties) => {
                    for (name, property) in properties {
                        check_schema_shape(property, &push_key(&keyword_path, name), errors);
                    }
                }
                other => errors.push(ValidationError::new(
                    keyword_path,
                    format!("expected an object of schemas, found {}", kind_of(other)),
                )),
            },
            "required" => {
                let all_strings = keyword_value
                    .as_array()
                    .is_some_and(|names| names.iter().all(Value::is_string));
                if !all_strings {
                    errors.push(ValidationError::new(
                        keyword_path,
                        format!(
                            "expected an array of property names, found {}",
                            excerpt(keyword_value)
                        ),
                    ));
                }
            }
            "items" => check_schema_shape(keyword_value, &keyword_path, errors),
            "enum" => {
                let is_non_empty_array = keyword_value
                    .as_array()
                    .is_some_and(|values| !values.is_empty());
                if !is_non_empty_array {
                    errors.push(ValidationError::new(
                        keyword_path,
                        format!(
                            "expected a non-empty array of values, found {}",
                            excerpt(keyword_value)
                        ),
                    ));
                }
            }
            _ => errors.push(ValidationError::new(
                keyword_path,
                format!(
                    "unsupported schema keyword \"{key}\"; supported: {}",
                    SCHEMA_KEYWORDS.join(", ")
                ),
            )),
        }
    }
}

/// Checks a run input against a schema; every mismatch, located under
/// `$.input` (e.g. `$.input.document`).
pub fn validate_input(schema: &InputSchema, value: &Value) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    check_value(schema, value, "$.input", &mut errors);
    errors
}

fn check_value(schema: &InputSchema, value: &Value, path: &str, errors: &mut Vec<ValidationError>) {
    if let Some(schema_type) = schema.schema_type {
        if !schema_type.accepts(value) {
            errors.push(ValidationError::new(
                path,
                format!(
                    "expected {}, found {} {}",
                    schema_type.name(),
                    kind_of(value),
                    excerpt(value)
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = &schema.enum_values {
        if !allowed.contains(value) {
            let choices: Vec<String> = allowed.iter().map(excerpt).collect();
            errors.push(ValidationError::new(
                path,
                format!("{} is not one of: {}", excerpt(value), choices.join(", ")),
            ));
        }
    }
    if let Value::Object(object) = value {
        for name in &schema.required {
            if !object.contains_key(name) {
                errors.push(ValidationError::new(
                    path,
                    format!("missing required property \"{name}\""),
                ));
            }
        }
        for (name, property_schema) in &schema.properties {
            if let Some(property) = object.get(name) {
                check_value(property_schema, property, &push_key(path, name), errors);
            }
        }
    }
    if let (Value::Array(elements), Some(items)) = (value, &schema.items) {
        for (index, element) in elements.iter().enumerate() {
            check_value(items, element, &push_index(path, index), errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(value: Value) -> InputSchema {
        serde_json::from_value(value).expect("test schema parses")
    }

    #[test]
    fn reports_missing_and_mistyped_properties_with_paths() {
        let schema = schema(json!({
            "type": "object",
            "required": ["document", "pages"],
            "properties": {
                "document": {"type": "string"},
                "pages": {"type": "array", "items": {"type": "integer"}},
                "mode": {"enum": ["fast", "slow"]}
            }
        }));
        let errors = validate_input(&schema, &json!({"document": 3, "mode": "medium"}));
        let paths: Vec<&str> = errors.iter().map(|error| error.path.as_str()).collect();
        assert_eq!(paths, vec!["$.input", "$.input.document", "$.input.mode"]);
        assert!(errors[0].message.contains("\"pages\""));
        assert!(errors[1].message.contains("expected string"));

        let errors = validate_input(&schema, &json!({"document": "d", "pages": [1, 2.5]}));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "$.input.pages[1]");
    }

    #[test]
    fn accepts_matching_input_and_integral_floats() {
        let schema = schema(json!({"type": "array", "items": {"type": "integer"}}));
        assert!(validate_input(&schema, &json!([1, 2.0, -3])).is_empty());
    }

    #[test]
    fn shape_check_rejects_unsupported_keywords() {
        let mut errors = Vec::new();
        check_schema_shape(
            &json!({"type": "text", "minLength": 3}),
            "$.input",
            &mut errors,
        );
        let paths: Vec<&str> = errors.iter().map(|error| error.path.as_str()).collect();
        assert_eq!(paths, vec!["$.input.minLength", "$.input.type"]);
    }
}
