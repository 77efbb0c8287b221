//! Parsing and validation of an `#[entity]` block into a [`Model`].

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{
    punctuated::Punctuated, FnArg, GenericArgument, ImplItem, ItemImpl, LitStr, Meta, Pat,
    PathArguments, ReturnType, Token, Type, Visibility,
};

/// A validated entity.
pub(crate) struct Model {
    pub item: ItemImpl,
    pub self_ty: Type,
    pub type_ident: syn::Ident,
    pub name: String,
    pub krate: syn::Path,
    pub operations: Vec<Operation>,
    /// `version = N` (at least 1) and `migrate = path`: given together, or neither.
    pub versioning: Option<(u32, syn::Path)>,
}

/// One operation (a `pub fn` of the block).
pub(crate) struct Operation {
    pub ident: syn::Ident,
    pub name: String,
    pub mutable: bool,
    pub is_async: bool,
    pub params: Vec<Param>,
    pub output: Output,
}

/// A parameter of an operation.
pub(crate) enum Param {
    /// The entity context (`&EntityContext` or `&mut EntityContext`).
    Context { mutable: bool },
    /// An input travelling in the message.
    Input(Box<Type>),
}

/// What an operation returns.
pub(crate) enum Output {
    Unit,
    Value(Box<Type>),
    /// `Result<T, E>`: `T` (or unit) on success, `E: Display` as the operation error.
    Result(Option<Box<Type>>),
}

/// Collects errors so that all mistakes are reported at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        let err = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

pub(crate) fn parse(args: TokenStream, input: TokenStream) -> syn::Result<Model> {
    let item: ItemImpl = syn::parse2(input).map_err(|err| {
        syn::Error::new(
            err.span(),
            "#[entity] goes on an inherent `impl` block of the state type, e.g. `#[entity] impl Counter { .. }`",
        )
    })?;
    let mut errors = Errors::default();
    let (mut name, mut krate) = (None, None);
    let (mut version, mut migrate): (Option<(u32, Span)>, Option<syn::Path>) = (None, None);
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    for meta in metas {
        match &meta {
            Meta::NameValue(nv) if nv.path.is_ident("name") => match lit_str(&nv.value) {
                Some(lit) if lit.value().is_empty() || lit.value().contains('@') => errors.push(
                    lit.span(),
                    "the entity name must be non-empty and must not contain `@`",
                ),
                Some(lit) => name = Some(lit.value()),
                None => errors.push(nv.value.span(), "expected a string: `name = \"Score\"`"),
            },
            Meta::NameValue(nv) if nv.path.is_ident("crate") => {
                match lit_str(&nv.value).map(syn::LitStr::parse::<syn::Path>) {
                    Some(Ok(path)) => krate = Some(path),
                    _ => errors.push(
                        nv.value.span(),
                        "expected a path in a string: `crate = \"my_entities\"`",
                    ),
                }
            }
            Meta::NameValue(nv) if nv.path.is_ident("version") => match lit_int(&nv.value) {
                Some(lit) => match lit.base10_parse::<u32>() {
                    Ok(0) => {
                        errors.push(
                            lit.span(),
                            "state versions start at 1 (stored states without a version are \
                             version 1): use `version = 2` or higher for a changed state shape",
                        );
                        version = Some((0, lit.span()));
                    }
                    Ok(n) => version = Some((n, lit.span())),
                    Err(_) => errors.push(lit.span(), "expected a version from 1 to 4294967295"),
                },
                None => errors.push(nv.value.span(), "expected an integer: `version = 2`"),
            },
            Meta::NameValue(nv) if nv.path.is_ident("migrate") => match &nv.value {
                syn::Expr::Path(p) if p.qself.is_none() => migrate = Some(p.path.clone()),
                other => errors.push(
                    other.span(),
                    "expected the path of a function: `migrate = Self::migrate`",
                ),
            },
            other => errors.push(
                other.span(),
                "unknown #[entity] argument; expected `name = \"...\"`, `crate = \"...\"`, \
                 `version = N` or `migrate = Self::migrate`",
            ),
        }
    }

    let versioning = match (version, migrate) {
        // Version 0 was reported above.
        (Some((0, _)), _) | (Some((1, _)) | None, None) => None,
        (Some((n, span)), None) => {
            errors.push(
                span,
                format!(
                    "`version = {n}` needs a migration for the states stored by older versions: \
                     add `migrate = Self::migrate` with \
                     `fn migrate(from_version: u32, old: serde_json::Value) -> Result<Self, String>`"
                ),
            );
            None
        }
        (None, Some(path)) => {
            errors.push(
                path.span(),
                "`migrate` needs the version the migration leads to: add `version = 2` (or higher)",
            );
            None
        }
        (Some((n, _)), Some(path)) => Some((n, path)),
    };
    // The migration function is no operation, even if it is `pub`.
    let migrate_fn = versioning.as_ref().and_then(|(_, path)| {
        (path.segments.len() == 2 && path.segments[0].ident == "Self")
            .then(|| path.segments[1].ident.clone())
    });

    if let Some((_, path, _)) = &item.trait_ {
        errors.push(
            path.span(),
            "#[entity] goes on an inherent impl block (`impl Counter`), not a trait impl",
        );
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.push(
            item.generics.span(),
            "#[entity] does not support generic impl blocks: an entity has one concrete state type; \
             define a non-generic state type (or a type alias) and annotate its impl",
        );
    }
    let type_ident = match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    };
    let Some(type_ident) = type_ident else {
        errors.push(
            item.self_ty.span(),
            "#[entity] needs a named state type, e.g. `impl Counter`",
        );
        return Err(errors.finish().expect_err("an error was pushed"));
    };

    let mut operations = Vec::new();
    for impl_item in &item.items {
        let ImplItem::Fn(method) = impl_item else {
            continue;
        };
        if !matches!(method.vis, Visibility::Public(_))
            || migrate_fn.as_ref() == Some(&method.sig.ident)
        {
            continue;
        }
        if let Some(op) = parse_operation(method, &mut errors) {
            if let Some(prev) = operations
                .iter()
                .find(|o: &&Operation| o.name.eq_ignore_ascii_case(&op.name))
            {
                errors.push(
                    op.ident.span(),
                    format!(
                        "operation `{}` clashes with `{}`: operation names are matched case-insensitively",
                        op.name, prev.name
                    ),
                );
            }
            operations.push(op);
        }
    }
    errors.finish()?;
    let krate = match krate {
        Some(path) => path,
        None => facade_path(),
    };
    Ok(Model {
        self_ty: (*item.self_ty).clone(),
        name: name.unwrap_or_else(|| type_ident.to_string()),
        type_ident,
        krate,
        operations,
        versioning,
        item,
    })
}

fn lit_int(expr: &syn::Expr) -> Option<&syn::LitInt> {
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => Some(i),
        _ => None,
    }
}

fn lit_str(expr: &syn::Expr) -> Option<&LitStr> {
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s),
        _ => None,
    }
}

/// The path of the facade crate, following a rename in the user's Cargo.toml.
fn facade_path() -> syn::Path {
    use proc_macro_crate::{crate_name, FoundCrate};
    match crate_name("entities") {
        Ok(FoundCrate::Name(name)) => {
            let ident = syn::Ident::new(&name, Span::call_site());
            syn::parse_quote!(::#ident)
        }
        _ => syn::parse_quote!(::entities),
    }
}

fn parse_operation(method: &syn::ImplItemFn, errors: &mut Errors) -> Option<Operation> {
    let sig = &method.sig;
    let ident = sig.ident.clone();
    let name = ident.to_string().trim_start_matches("r#").to_string();
    let mut ok = true;
    if !sig.generics.params.is_empty() {
        errors.push(
            sig.generics.span(),
            format!("operation `{name}` is generic; operations take concrete input types (make it private or remove the generics)"),
        );
        ok = false;
    }
    let mutable = match sig.receiver() {
        None => {
            errors.push(
                sig.ident.span(),
                format!("operation `{name}` has no receiver: take `&self` or `&mut self`, or make it private if it is a helper"),
            );
            return None;
        }
        Some(receiver) if receiver.reference.is_none() => {
            errors.push(
                receiver.span(),
                format!("operation `{name}` takes `self` by value; take `&self` (reads) or `&mut self` (writes)"),
            );
            return None;
        }
        Some(receiver)
            if !matches!(&*receiver.ty, Type::Reference(_)) || receiver.colon_token.is_some() =>
        {
            errors.push(
                receiver.span(),
                format!("operation `{name}` must take `&self` or `&mut self`"),
            );
            return None;
        }
        Some(receiver) => receiver.mutability.is_some(),
    };
    let mut params = Vec::new();
    for arg in sig.inputs.iter().skip(1) {
        let FnArg::Typed(pat_ty) = arg else { continue };
        if let Some(context_mut) = context_param(&pat_ty.ty) {
            params.push(Param::Context {
                mutable: context_mut,
            });
            continue;
        }
        if let Some(span) = borrowed(&pat_ty.ty) {
            let what = match &*pat_ty.pat {
                Pat::Ident(p) => format!("input `{}`", p.ident),
                _ => "an input".to_string(),
            };
            errors.push(
                span,
                format!("{what} of operation `{name}` borrows: inputs arrive in messages and must be owned (use `String` for `&str`, `Vec<T>` for `&[T]`)"),
            );
            ok = false;
            continue;
        }
        params.push(Param::Input(pat_ty.ty.clone()));
    }
    if params
        .iter()
        .filter(|p| matches!(p, Param::Context { .. }))
        .count()
        > 1
    {
        errors.push(
            sig.inputs.span(),
            format!("operation `{name}` takes the context twice"),
        );
        ok = false;
    }
    let output = match &sig.output {
        ReturnType::Default => Output::Unit,
        ReturnType::Type(_, ty) => {
            if let Some(span) = borrowed(ty) {
                errors.push(
                    span,
                    format!("operation `{name}` returns a borrow: results travel in messages and must be owned"),
                );
                ok = false;
            }
            classify_output(ty)
        }
    };
    ok.then(|| Operation {
        ident,
        name,
        mutable,
        is_async: sig.asyncness.is_some(),
        params,
        output,
    })
}

/// `Some(is_mut)` if the type is `&EntityContext` or `&mut EntityContext`.
fn context_param(ty: &Type) -> Option<bool> {
    let Type::Reference(r) = ty else { return None };
    let Type::Path(p) = &*r.elem else { return None };
    let last = p.path.segments.last()?;
    (last.ident == "EntityContext").then_some(r.mutability.is_some())
}

/// The span of a reference or lifetime inside the type, if any.
fn borrowed(ty: &Type) -> Option<Span> {
    use syn::visit::Visit;
    struct Find(Option<Span>);
    impl<'ast> Visit<'ast> for Find {
        fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
            self.0.get_or_insert(r.span());
        }
        fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
            self.0.get_or_insert(l.span());
        }
    }
    let mut find = Find(None);
    find.visit_type(ty);
    find.0
}

fn classify_output(ty: &Type) -> Output {
    if let Type::Tuple(t) = ty {
        if t.elems.is_empty() {
            return Output::Unit;
        }
    }
    if let Type::Path(p) = ty {
        if let Some(last) = p.path.segments.last() {
            if last.ident == "Result" {
                if let PathArguments::AngleBracketed(args) = &last.arguments {
                    if let Some(GenericArgument::Type(ok)) = args.args.first() {
                        return match ok {
                            Type::Tuple(t) if t.elems.is_empty() => Output::Result(None),
                            ok => Output::Result(Some(Box::new(ok.clone()))),
                        };
                    }
                }
            }
        }
    }
    Output::Value(Box::new(ty.clone()))
}
