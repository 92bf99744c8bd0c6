//! Code generation for `#[derive(OutboxEvent)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::attr::{Container, Routing};
use crate::ctxt::Ctxt;

pub fn derive(input: &syn::DeriveInput) -> TokenStream {
    let mut cx = Ctxt::default();
    let container = Container::from_ast(&mut cx, input);
    match cx.check() {
        Ok(()) => implementation(input, &container),
        // As thiserror does: next to the errors, an impl with the right shape, so that code using the type's
        // constants does not add a page of follow-on errors to the real ones.
        Err(errors) => {
            let fallback = fallback(input, &container);
            let errors = errors.into_compile_error();
            quote!(#errors #fallback)
        }
    }
}

fn krate(container: &Container) -> TokenStream {
    match &container.krate {
        Some(path) => quote!(#path),
        None => quote!(::outbox),
    }
}

fn implementation(input: &syn::DeriveInput, c: &Container) -> TokenStream {
    let krate = krate(c);
    let ident = &input.ident;
    let (Some(event_type), Some(aggregate_id)) = (&c.event_type, &c.aggregate_id) else {
        // `Container::from_ast` reports both as errors, so this is never reached with a clean context.
        return fallback(input, c);
    };
    let source = match &c.source {
        Some(source) => quote!(#source),
        // Most services are one crate: its name makes a reasonable URI-reference source by default.
        None => quote!(::core::concat!("/", ::core::env!("CARGO_PKG_NAME"))),
    };
    let version = c.version.as_deref().unwrap_or("1.0");
    let aggregate_type = c
        .aggregate_type
        .clone()
        .unwrap_or_else(|| default_aggregate_type(event_type));
    let destination = match (&c.topic, c.routing) {
        (Some(topic), _) => topic.clone(),
        (None, Routing::EventType) => event_type.clone(),
        (None, Routing::AggregateType) => aggregate_type.clone(),
    };

    let id_field = &aggregate_id.ident;
    let aggregate_id_body = quote_spanned! {aggregate_id.ty.span()=>
        #krate::__private::AggregateId::to_aggregate_id(&self.#id_field)
    };
    let dataschema = c.dataschema.as_ref().map(|schema| {
        quote!(const DATASCHEMA: ::core::option::Option<&'static str> = ::core::option::Option::Some(#schema);)
    });
    let extensions = (!c.extensions.is_empty()).then(|| {
        let pairs = c
            .extensions
            .iter()
            .map(|(name, value)| quote!((#name, #value)));
        quote!(const EXTENSIONS: &'static [(&'static str, &'static str)] = &[#(#pairs),*];)
    });
    let subject = c.subject.as_ref().map(|member| {
        let field = &member.ident;
        let body = quote_spanned! {member.ty.span()=>
            #krate::__private::AggregateId::to_aggregate_id(&self.#field)
        };
        quote! {
            fn subject(&self) -> ::core::option::Option<::std::string::String> {
                ::core::option::Option::Some(#body)
            }
        }
    });
    let headers = c.headers.as_ref().map(|path| {
        quote! {
            fn headers(&self) -> ::std::vec::Vec<(::std::string::String, ::std::string::String)> {
                #path(self)
            }
        }
    });
    let json = json_result(&krate);
    let data = c.data.as_ref().map(|path| {
        quote! {
            fn message_data(&self) -> #json {
                #krate::__private::serde_json::value::to_raw_value(&#path(self))
            }
        }
    });

    // Spanned on the attribute, so a type without a schema is reported where the schema was asked for.
    let schema = c.schema.as_ref().map(|schema| {
        let ty = match &schema.ty {
            Some(ty) => quote!(#ty),
            None => quote_spanned!(schema.key.span()=> Self),
        };
        quote_spanned! {schema.key.span()=>
            const JSON_SCHEMA: ::core::option::Option<#krate::event::SchemaFn> =
                ::core::option::Option::Some(<#ty as #krate::__private::PayloadSchema>::json_schema);
        }
    });

    let to_json = serde_methods(&krate, ident);
    quote! {
        #[automatically_derived]
        impl #krate::OutboxEvent for #ident {
            const EVENT_TYPE: &'static str = #event_type;
            const SOURCE: &'static str = #source;
            const DATA_VERSION: &'static str = #version;
            const AGGREGATE_TYPE: &'static str = #aggregate_type;
            const DESTINATION: &'static str = #destination;
            #dataschema
            #extensions
            #schema

            fn aggregate_id(&self) -> ::std::string::String {
                #aggregate_id_body
            }
            #to_json
            #subject
            #headers
            #data
        }

        #krate::__private::inventory::submit! {
            #krate::__private::Registration::of::<#ident>(
                ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident))
            )
        }
    }
}

/// Serde goes through helper traits whose errors say what an event needs, pointed at the struct's name.
fn serde_methods(krate: &TokenStream, ident: &syn::Ident) -> TokenStream {
    let json = json_result(krate);
    let to_json = quote_spanned! {ident.span()=> #krate::__private::EventSerialize::to_json(self) };
    let from_json = quote_spanned! {ident.span()=> <Self as #krate::__private::EventDeserialize>::from_json(json) };
    quote! {
        fn to_json(&self) -> #json {
            #to_json
        }

        fn from_json(json: &str) -> ::core::result::Result<Self, #krate::__private::serde_json::Error> {
            #from_json
        }
    }
}

/// `Result<Box<RawValue>, serde_json::Error>`, the type of an event's JSON forms, spelled through the re-export.
fn json_result(krate: &TokenStream) -> TokenStream {
    quote! {
        ::core::result::Result<
            ::std::boxed::Box<#krate::__private::serde_json::value::RawValue>,
            #krate::__private::serde_json::Error,
        >
    }
}

/// `com.example.user.created` belongs to aggregate type `com.example.user`: python-outbox-core's types are
/// `<company>.<domain>.<action>`, so dropping the action names the aggregate.
fn default_aggregate_type(event_type: &str) -> String {
    match event_type.rsplit_once('.') {
        Some((aggregate, _)) if !aggregate.is_empty() => aggregate.to_owned(),
        _ => event_type.to_owned(),
    }
}

/// An impl with placeholder values, emitted only next to compile errors, so the program never runs. It is not
/// registered and asks nothing of the type (not even serde), so it cannot add errors of its own.
fn fallback(input: &syn::DeriveInput, c: &Container) -> TokenStream {
    let krate = krate(c);
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    // A generic struct is already an error; bounding the fallback on the trait's supertraits keeps it from adding
    // `T cannot be sent between threads` on top. (A concrete struct cannot take such bounds: rustc rejects
    // trivially false ones.)
    let bounds = (!input.generics.params.is_empty()).then(|| {
        let predicates = where_clause.into_iter().flat_map(|w| &w.predicates);
        quote!(where #(#predicates,)* Self: ::core::marker::Send + ::core::marker::Sync + 'static)
    });
    let where_clause = bounds.unwrap_or_default();
    let json = json_result(&krate);
    quote! {
        #[automatically_derived]
        impl #impl_generics #krate::OutboxEvent for #ident #ty_generics #where_clause {
            const EVENT_TYPE: &'static str = "";
            const SOURCE: &'static str = "";
            const DATA_VERSION: &'static str = "";
            const AGGREGATE_TYPE: &'static str = "";
            const DESTINATION: &'static str = "";

            fn aggregate_id(&self) -> ::std::string::String {
                ::core::unreachable!("the OutboxEvent derive failed to compile")
            }

            fn to_json(&self) -> #json {
                ::core::unreachable!("the OutboxEvent derive failed to compile")
            }

            fn from_json(_: &str) -> ::core::result::Result<Self, #krate::__private::serde_json::Error> {
                ::core::unreachable!("the OutboxEvent derive failed to compile")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::default_aggregate_type;

    #[test]
    fn aggregate_type_drops_the_action() {
        assert_eq!(
            default_aggregate_type("com.example.user.created"),
            "com.example.user"
        );
        assert_eq!(default_aggregate_type("created"), "created");
        assert_eq!(default_aggregate_type(".created"), ".created");
    }
}
