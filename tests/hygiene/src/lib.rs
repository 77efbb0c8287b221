//! `#[entity]` in a crate that renames the facade (`renamed_entities`), in a module without the
//! implicit prelude, next to items that shadow the names generated code might use unqualified.

#[allow(dead_code, unreachable_pub)]
mod shadows {
    // Names that generated code must not pick up.
    pub struct Result;
    pub struct Ok;
    pub struct Err;
    pub struct Box;
    pub struct Vec;
    pub struct String;
    pub struct Option;
    pub mod serde {}
    pub mod entities {}
}

/// A class-based entity among the shadowing names.
#[no_implicit_prelude]
pub mod counter {
    #[allow(unused_imports)]
    use super::shadows::*;
    use ::renamed_entities::entity;

    /// The entity's state.
    #[derive(
        ::core::fmt::Debug, ::core::default::Default, ::serde::Serialize, ::serde::Deserialize,
    )]
    pub struct Tally {
        value: i64,
    }

    #[entity]
    impl Tally {
        /// Operation `add`.
        pub fn add(&mut self, amount: i64, times: u32) {
            self.value += amount * <i64 as ::core::convert::From<u32>>::from(times);
        }
        /// Operation `get`.
        pub fn get(&self) -> i64 {
            self.value
        }
        /// Operation `check`.
        pub fn check(&self, limit: i64) -> ::core::result::Result<i64, ::std::string::String> {
            if self.value <= limit {
                ::core::result::Result::Ok(self.value)
            } else {
                ::core::result::Result::Err(::std::format!("{} is over {}", self.value, limit))
            }
        }
    }
}

/// A versioned entity under the same shadows.
#[no_implicit_prelude]
pub mod versioned {
    #[allow(unused_imports)]
    use super::shadows::*;
    use ::renamed_entities::entity;

    /// The entity's state.
    #[derive(
        ::core::fmt::Debug, ::core::default::Default, ::serde::Serialize, ::serde::Deserialize,
    )]
    pub struct Level {
        value: i64,
    }

    #[entity(version = 2, migrate = Self::migrate)]
    impl Level {
        fn migrate(
            from_version: u32,
            old: ::serde_json::Value,
        ) -> ::core::result::Result<Self, ::std::string::String> {
            match old.as_i64() {
                ::core::option::Option::Some(value) if from_version == 1 => {
                    ::core::result::Result::Ok(Self { value: value * 10 })
                }
                _ => ::core::result::Result::Err(::std::format!("cannot read {old}")),
            }
        }
        /// Operation `get`.
        pub fn get(&self) -> i64 {
            self.value
        }
    }
}

#[cfg(test)]
mod tests {
    use renamed_entities::prelude::*;

    use crate::counter::Tally;

    #[tokio::test]
    async fn a_renamed_facade_and_shadowed_names_work() {
        let runtime = Runtime::builder()
            .store(SqliteStore::in_memory().unwrap())
            .entity::<Tally>()
            .start()
            .await
            .unwrap();
        let client = runtime.client();
        client.signal::<Tally>("t").add(3, 4).await.unwrap();
        assert_eq!(client.call::<Tally>("t").get().await.unwrap(), 12);
        assert_eq!(client.call::<Tally>("t").check(20).await.unwrap(), 12);
        let err = client.call::<Tally>("t").check(5).await.unwrap_err();
        assert_eq!(err.to_string(), "operation failed: 12 is over 5");
        runtime.shutdown().await.unwrap();
    }

    #[test]
    fn a_versioned_entity_expands_under_shadowed_names() {
        use crate::versioned::Level;
        assert_eq!(<Level as Entity>::VERSION, 2);
        assert_eq!(
            <Level as Entity>::migrate_state(1, serde_json::json!(4)),
            Ok(serde_json::json!({ "value": 40 }))
        );
        assert!(<Level as Entity>::migrate_state(1, serde_json::json!("x")).is_err());
    }
}
