//! Parsing of `#[outbox(...)]` on the struct and its fields into a checked model.

use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Fields, LitStr};

use crate::check;
use crate::ctxt::Ctxt;

const CONTAINER_KEYS: &[&str] = &[
    "type",
    "source",
    "version",
    "aggregate_type",
    "topic",
    "routing",
    "dataschema",
    "extension",
    "headers",
    "data",
    "schema",
    "crate",
];
const FIELD_KEYS: &[&str] = &["aggregate_id", "subject"];
const ROUTINGS: &[&str] = &["aggregate_type", "event_type"];

/// Where messages of a type go when no `topic` is given.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// One destination per aggregate type: keeps order across an aggregate's event types.
    AggregateType,
    /// One destination per event type, as python-outbox-core did.
    EventType,
}

/// A checked `#[derive(OutboxEvent)]` declaration. String values are only `Some` when they passed their check.
pub struct Container {
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub version: Option<String>,
    pub aggregate_type: Option<String>,
    pub topic: Option<String>,
    pub routing: Routing,
    pub dataschema: Option<String>,
    pub extensions: Vec<(String, String)>,
    pub headers: Option<syn::ExprPath>,
    pub data: Option<syn::ExprPath>,
    pub schema: Option<Schema>,
    pub krate: Option<syn::Path>,
    pub aggregate_id: Option<Member>,
    pub subject: Option<Member>,
}

/// `#[outbox(schema)]` (the struct's own JSON Schema) or `#[outbox(schema = Type)]` (another type's, for a
/// payload that `data` renders).
pub struct Schema {
    /// The attribute's key, where an error about the schema points.
    pub key: syn::Path,
    pub ty: Option<syn::Type>,
}

/// A field the derive reads, with the type its errors point at.
pub struct Member {
    pub ident: syn::Ident,
    pub ty: syn::Type,
}

/// One attribute key that may be set once; a second setting is reported on its own token.
struct Once<T> {
    key: &'static str,
    value: Option<T>,
}

impl<T> Once<T> {
    fn new(key: &'static str) -> Self {
        Self { key, value: None }
    }

    fn set(&mut self, cx: &mut Ctxt, at: impl ToTokens, value: T) {
        if self.value.is_some() {
            cx.error_spanned_by(at, format!("duplicate outbox attribute `{}`", self.key));
        } else {
            self.value = Some(value);
        }
    }
}

impl Container {
    /// Reads and checks everything the derive needs from `input`, recording every problem in `cx`.
    pub fn from_ast(cx: &mut Ctxt, input: &syn::DeriveInput) -> Self {
        let mut event_type = Once::new("type");
        let mut source = Once::new("source");
        let mut version = Once::new("version");
        let mut aggregate_type = Once::new("aggregate_type");
        let mut topic = Once::new("topic");
        let mut routing = Once::new("routing");
        let mut dataschema = Once::new("dataschema");
        let mut headers = Once::new("headers");
        let mut data = Once::new("data");
        let mut krate = Once::new("crate");
        let mut schema = Once::new("schema");
        let mut extensions: Vec<(String, String)> = Vec::new();
        // Set when `type` appears at all, so an invalid value is not also reported as a missing one.
        let mut type_seen = false;

        for attr in input.attrs.iter().filter(|a| a.path().is_ident("outbox")) {
            let result = attr.parse_nested_meta(|meta| {
                let key = meta.path.clone();
                if key.is_ident("type") {
                    type_seen = true;
                    let lit = string(&meta)?;
                    if let Some(v) = checked(cx, &lit, check::event_type) {
                        event_type.set(cx, &key, v);
                    }
                } else if key.is_ident("source") {
                    let lit = string(&meta)?;
                    if let Some(v) = checked(cx, &lit, check::source) {
                        source.set(cx, &key, v);
                    }
                } else if key.is_ident("version") {
                    let lit = string(&meta)?;
                    if let Some(v) = checked(cx, &lit, check::version) {
                        version.set(cx, &key, v);
                    }
                } else if key.is_ident("aggregate_type") {
                    let lit = string(&meta)?;
                    if let Some(v) = checked(cx, &lit, |v| check::name(v, "`aggregate_type`")) {
                        aggregate_type.set(cx, &key, v);
                    }
                } else if key.is_ident("topic") {
                    let lit = string(&meta)?;
                    if let Some(v) = checked(cx, &lit, |v| check::name(v, "`topic`")) {
                        topic.set(cx, &key, (v, key.span()));
                    }
                } else if key.is_ident("routing") {
                    let lit = string(&meta)?;
                    match lit.value().as_str() {
                        "aggregate_type" => {
                            routing.set(cx, &key, (Routing::AggregateType, key.span()))
                        }
                        "event_type" => routing.set(cx, &key, (Routing::EventType, key.span())),
                        other => cx.error_spanned_by(&lit, unknown("routing", other, ROUTINGS)),
                    }
                } else if key.is_ident("dataschema") {
                    let lit = string(&meta)?;
                    if let Some(v) = checked(cx, &lit, check::dataschema) {
                        dataschema.set(cx, &key, v);
                    }
                } else if key.is_ident("extension") {
                    meta.parse_nested_meta(|ext| {
                        let name = ext.path.to_token_stream().to_string().replace(' ', "");
                        let value = string(&ext)?.value();
                        if let Err(message) = check::extension_name(&name) {
                            cx.error_spanned_by(&ext.path, message);
                        } else if extensions.iter().any(|(n, _)| *n == name) {
                            cx.error_spanned_by(&ext.path, format!("duplicate extension `{name}`"));
                        } else {
                            extensions.push((name, value));
                        }
                        Ok(())
                    })?;
                } else if key.is_ident("headers") {
                    headers.set(cx, &key, bare_or_string(&meta)?);
                } else if key.is_ident("data") {
                    data.set(cx, &key, bare_or_string(&meta)?);
                } else if key.is_ident("schema") {
                    let ty = if meta.input.peek(syn::Token![=]) {
                        Some(bare_or_string(&meta)?)
                    } else {
                        None
                    };
                    schema.set(
                        cx,
                        &key,
                        Schema {
                            key: key.clone(),
                            ty,
                        },
                    );
                } else if key.is_ident("crate") {
                    let lit = string(&meta)?;
                    match lit.parse::<syn::Path>() {
                        Ok(path) => krate.set(cx, &key, path),
                        Err(_) => cx.error_spanned_by(
                            &lit,
                            "`crate` must be a path, like \"my_crate::outbox\"",
                        ),
                    }
                } else {
                    let name = key.to_token_stream().to_string();
                    cx.error_spanned_by(&key, unknown("outbox attribute", &name, CONTAINER_KEYS));
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(error) = result {
                cx.syn_error(error);
            }
        }

        let topic = topic.value;
        let routing = routing.value;
        if let (Some((_, topic_span)), Some((_, routing_span))) = (&topic, &routing) {
            let message = "`topic` and `routing` both choose the destination: keep one of them";
            cx.syn_error(syn::Error::new(*routing_span, message));
            cx.syn_error(syn::Error::new(*topic_span, message));
        }

        let schema = schema.value;
        if let (Some(Schema { key, ty: None }), Some(_)) = (&schema, &data.value) {
            cx.error_spanned_by(
                key,
                "with `data`, the payload is not this struct: name the payload's type, `schema = PayloadType`",
            );
        }

        let (aggregate_id, subject) = members(cx, input);
        if !type_seen {
            cx.error_spanned_by(
                &input.ident,
                "missing event type: add `#[outbox(type = \"com.example.domain.action\")]` to the struct",
            );
        }

        Container {
            event_type: event_type.value,
            source: source.value,
            version: version.value,
            aggregate_type: aggregate_type.value,
            topic: topic.map(|(value, _)| value),
            routing: routing.map_or(Routing::AggregateType, |(routing, _)| routing),
            dataschema: dataschema.value,
            extensions,
            headers: headers.value,
            data: data.value,
            schema,
            krate: krate.value,
            aggregate_id,
            subject,
        }
    }
}

/// The `aggregate_id` and `subject` fields; also where the shape of the type itself is checked, since only a
/// struct with named fields has fields to mark.
fn members(cx: &mut Ctxt, input: &syn::DeriveInput) -> (Option<Member>, Option<Member>) {
    let fields = match &input.data {
        syn::Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => fields,
            Fields::Unnamed(fields) => {
                cx.error_spanned_by(
                    fields,
                    "#[derive(OutboxEvent)] needs named fields, so one can be marked `#[outbox(aggregate_id)]`; \
                     tuple structs are not supported",
                );
                return (None, None);
            }
            Fields::Unit => {
                cx.error_spanned_by(
                    &input.ident,
                    "#[derive(OutboxEvent)] needs a field marked `#[outbox(aggregate_id)]`; a unit struct has none",
                );
                return (None, None);
            }
        },
        syn::Data::Enum(data) => {
            cx.error_spanned_by(
                data.enum_token,
                "#[derive(OutboxEvent)] supports structs only: derive it on one struct per event type",
            );
            return (None, None);
        }
        syn::Data::Union(data) => {
            cx.error_spanned_by(
                data.union_token,
                "#[derive(OutboxEvent)] supports structs only, not unions",
            );
            return (None, None);
        }
    };
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "#[derive(OutboxEvent)] does not support generic structs: the registry decodes stored events by type \
             name, so each event must be one concrete type",
        );
    }

    let mut aggregate_id: Option<Member> = None;
    let mut subject: Option<Member> = None;
    for field in &fields.named {
        let Some(ident) = &field.ident else { continue };
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("outbox")) {
            let result = attr.parse_nested_meta(|meta| {
                let slot = if meta.path.is_ident("aggregate_id") {
                    &mut aggregate_id
                } else if meta.path.is_ident("subject") {
                    &mut subject
                } else {
                    let name = meta.path.to_token_stream().to_string();
                    cx.error_spanned_by(
                        &meta.path,
                        unknown("outbox field attribute", &name, FIELD_KEYS),
                    );
                    return skip_value(&meta);
                };
                if let Some(previous) = slot {
                    let key = meta.path.to_token_stream();
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "`#[outbox({key})]` is already on field `{}`; mark exactly one field",
                            previous.ident
                        ),
                    );
                } else {
                    *slot = Some(Member {
                        ident: ident.clone(),
                        ty: field.ty.clone(),
                    });
                }
                Ok(())
            });
            if let Err(error) = result {
                cx.syn_error(error);
            }
        }
    }
    if aggregate_id.is_none() {
        cx.error_spanned_by(
            &input.ident,
            "no aggregate id: mark the field that identifies the aggregate with `#[outbox(aggregate_id)]`",
        );
    }
    (aggregate_id, subject)
}

/// Runs `check` on a string literal; a failure is reported on the literal.
fn checked(
    cx: &mut Ctxt,
    lit: &LitStr,
    check: impl Fn(&str) -> Result<(), String>,
) -> Option<String> {
    let value = lit.value();
    match check(&value) {
        Ok(()) => Some(value),
        Err(message) => {
            cx.error_spanned_by(lit, message);
            None
        }
    }
}

fn string(meta: &ParseNestedMeta) -> syn::Result<LitStr> {
    let key = meta.path.to_token_stream().to_string();
    let expr: syn::Expr = meta.value()?.parse()?;
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Ok(lit),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected a string literal: `{key} = \"...\"`"),
        )),
    }
}

/// A value given bare (`headers = my_headers`, `schema = Payload`) or as a string (`headers = "my_headers"`): a
/// function path or a type.
fn bare_or_string<T: syn::parse::Parse>(meta: &ParseNestedMeta) -> syn::Result<T> {
    let input = meta.value()?;
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        lit.parse()
    } else {
        input.parse()
    }
}

/// After an unknown key, consume its value (if any) so parsing goes on and later keys are still checked.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|nested| skip_value(&nested))?;
    }
    Ok(())
}

fn unknown(what: &str, name: &str, valid: &[&str]) -> String {
    match check::suggest(name, valid) {
        Some(suggestion) => format!("unknown {what} `{name}`; did you mean `{suggestion}`?"),
        None => format!(
            "unknown {what} `{name}`; expected one of: {}",
            valid.join(", ")
        ),
    }
}
