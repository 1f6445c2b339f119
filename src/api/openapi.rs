//! The error responses of the OpenAPI document, added in one place.
//!
//! Every failure a handler returns is an `ApiError`, sent as
//! `application/problem+json` (`super::error`), and which ones an operation
//! can give follows from its shape: a bad query, path or body is 400, a
//! route that needs credentials answers 401/403, a path naming a record
//! 404, a JSON body 413/415/422, any storage trouble 503. Writing those on
//! every `#[utoipa::path]` by hand would drift; this pass writes them from
//! the shape of each operation, and moves the problem bodies the handlers
//! document as `body = Problem` to the media type they are sent with.
//! schemathesis (`scripts/schemathesis.sh`) holds the document to what the
//! server really answers.

use serde_json::{json, Map, Value};

/// Operations whose errors are not problem+json: the probes and metrics
/// (plain bodies), the OTLP receiver (errors are `google.rpc.Status` in the
/// request's encoding) and the document itself.
const OWN_ERROR_FORMAT: [&str; 5] = ["/healthz", "/readyz", "/metrics", "/v1/metrics", "/api/v1/openapi.json"];

const PROBLEM: &str = "application/problem+json";

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { PROBLEM: { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

/// Add the error responses to every operation of `doc` (an OpenAPI 3.1
/// document as JSON).
pub fn add_error_responses(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else { continue };
        for (method, op) in ops.iter_mut() {
            if !matches!(method.as_str(), "get" | "put" | "post" | "patch" | "delete") {
                continue;
            }
            let Some(op) = op.as_object_mut() else { continue };
            if OWN_ERROR_FORMAT.contains(&path.as_str()) {
                continue;
            }
            add_to_operation(op);
        }
    }
}

fn add_to_operation(op: &mut Map<String, Value>) {
    let params = op
        .get("parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has_query = params.iter().any(|p| p["in"] == "query");
    let has_path = params.iter().any(|p| p["in"] == "path");
    let has_body = op.contains_key("requestBody");
    let json_body = op
        .get("requestBody")
        .is_some_and(|b| b["content"].get("application/json").is_some());
    let secured = op.contains_key("security");
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    // What the handlers wrote as `body = Problem` is sent as problem+json.
    for r in responses.values_mut() {
        if let Some(content) = r.get_mut("content").and_then(Value::as_object_mut) {
            let is_problem = content
                .get("application/json")
                .and_then(|c| c["schema"]["$ref"].as_str())
                .is_some_and(|r| r.ends_with("/Problem") || r.ends_with("/DraftProblem"));
            if is_problem {
                if let Some(c) = content.remove("application/json") {
                    content.insert(PROBLEM.into(), c);
                }
            }
        }
    }
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_string())
            .or_insert_with(|| problem_response(description));
    };
    if has_query || has_path || has_body {
        add(
            "400",
            "A query parameter, path segment or body that cannot be read; the detail names it",
        );
    }
    if secured {
        add("401", "No, an unknown or an expired credential");
        add("403", "The caller's role does not allow this");
    }
    if has_path {
        add("404", "No such record");
    }
    if json_body {
        add("413", "The body is larger than `server.max_request_bytes`");
        add("415", "The body is not `application/json`");
        add(
            "422",
            "The body does not fit the schema, or a field is invalid; `field` names it",
        );
    }
    add("503", "The store could not complete the request; retry");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_get_the_errors_their_shape_allows() {
        let mut doc = json!({"paths": {
            "/api/v1/things/{id}": {"patch": {
                "parameters": [{"in": "path", "name": "id"}],
                "requestBody": {"content": {"application/json": {}}},
                "security": [{"bearer": []}],
                "responses": {
                    "200": {"description": "ok"},
                    "409": {"description": "stale", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                }
            }},
            "/healthz": {"get": {"responses": {"200": {"description": "ok"}}}}
        }});
        add_error_responses(&mut doc);
        let r = &doc["paths"]["/api/v1/things/{id}"]["patch"]["responses"];
        for s in ["400", "401", "403", "404", "409", "413", "415", "422", "503"] {
            assert!(r[s]["content"][PROBLEM].is_object(), "{s}: {r}");
        }
        assert!(r["409"]["content"]["application/json"].is_null());
        assert_eq!(r["409"]["description"], "stale");
        let h = &doc["paths"]["/healthz"]["get"]["responses"];
        assert_eq!(h.as_object().unwrap().len(), 1);
    }
}
