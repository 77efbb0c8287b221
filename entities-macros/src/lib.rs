//! `#[entity]`: turns the `impl` block of a state type into a class-based durable entity.
//!
//! The macro parses the block, validates every operation, and expands to an implementation of
//! `entities::Entity` (a dispatcher from operation names to methods) plus a typed proxy. It
//! holds no runtime logic: the generated code calls the facade's hidden `__private` module.
//! When the input is wrong it emits the user's block unchanged plus `compile_error!`s, so IDEs
//! keep working.

mod expand;
mod parse;

use proc_macro::TokenStream;

/// Makes a class-based entity of the state type whose `impl` block it annotates.
///
/// Every `pub fn` is an operation named after the method (matched case-insensitively); other
/// fns are private helpers. See the `entities` crate documentation for the rules.
///
/// Arguments: `name = "..."` overrides the entity name (default: the type name);
/// `crate = "path"` names the facade crate if it is renamed.
#[proc_macro_attribute]
pub fn entity(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: proc_macro2::TokenStream = input.clone().into();
    match parse::parse(args.into(), input.into()).and_then(|model| expand::expand(&model)) {
        Ok(tokens) => tokens.into(),
        Err(errors) => {
            let errors = errors.to_compile_error();
            quote::quote!(#item #errors).into()
        }
    }
}
