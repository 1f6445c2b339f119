//! The storage conformance suite, generic over the backend: every backend
//! must pass it (embedded always; MongoDB when a replica set is available).
//! It lives in the library so the integration tests can run it on a store
//! of their choosing.
