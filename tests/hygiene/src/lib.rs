//! `#[entity]` in a crate that renames the facade (`renamed_entities`), in a module without the
//! implicit prelude, next to items that shadow the names generated code might use unqualified.

#[allow(dead_code)]
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

#[no_implicit_prelude]
pub mod counter {
    #[allow(unused_imports)]
    use super::shadows::*;
    use ::renamed_entities::entity;

    #[derive(::core::default::Default, ::serde::Serialize, ::serde::Deserialize)]
    pub struct Tally {
        value: i64,
    }

    #[entity]
    impl Tally {
        pub fn add(&mut self, amount: i64, times: u32) {
            self.value += amount * <i64 as ::core::convert::From<u32>>::from(times);
        }
        pub fn get(&self) -> i64 {
            self.value
        }
        pub fn check(&self, limit: i64) -> ::core::result::Result<i64, ::std::string::String> {
            if self.value <= limit {
                ::core::result::Result::Ok(self.value)
            } else {
                ::core::result::Result::Err(::std::format!("{} is over {}", self.value, limit))
            }
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
}
