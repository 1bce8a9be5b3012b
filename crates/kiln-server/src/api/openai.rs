//! OpenAI's Images API: `POST /v1/images/generations`, `POST /v1/images/edits` (multipart:
//! img2img, or inpainting with a mask), `GET /v1/models`; errors as
//! `{"error": {"message", "type", "param", "code"}}`.
//!
//! OpenAI's fields: `model`, `prompt`, `n`, `size` (`"WxH"`, or `"auto"` = the model's size),
//! `response_format` (`url`, the default, or `b64_json`), `output_format` (`png` only), `user`
//! (logged); `quality`, `style`, `background`, `moderation` are accepted and have no effect.
//! kiln's own, in the same body: see [`kiln_fields`](crate::api::request::kiln_fields).

use std::sync::Arc;

use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::api::request::{body_params, read_body, read_init, to_request, Fields, Params};
use crate::api::respond::OpenAiError;
use crate::state::AppState;
use crate::work::GenOutput;
use crate::error::ApiError;
use crate::jobs::lock;

/// How the pictures go back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResponseFormat {
    Url,
    B64Json,
}

fn response_format(v: Option<&str>) -> Result<ResponseFormat, ApiError> {
    match v {
        None | Some("url") => Ok(ResponseFormat::Url),
        Some("b64_json") => Ok(ResponseFormat::B64Json),
        Some(other) => Err(ApiError::invalid("response_format", format!("response_format must be \"url\" or \"b64_json\", got {other:?}"))),
    }
}

/// The fields of generations and edits (everything but the images), and how to answer.
fn openai_params(state: &AppState, f: &Fields) -> Result<(Params, ResponseFormat), ApiError> {
    let p = body_params(state, f)?;
    let format = response_format(f.str("response_format")?)?;
    Ok((p, format))
}

/// `{"created", "data": [{"url"|"b64_json", "revised_prompt": null}]}`.
fn images_response(state: &AppState, headers: &HeaderMap, out: &GenOutput, format: ResponseFormat) -> Value {
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let base = base_url(state, headers);
    let data: Vec<Value> = out
        .images
        .iter()
        .map(|image| match format {
            ResponseFormat::B64Json => json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(&image.png), "revised_prompt": null}),
            ResponseFormat::Url => json!({"url": format!("{base}{}", state.store_file(image.png.clone())), "revised_prompt": null}),
        })
        .collect();
    json!({"created": created, "data": data, "output_format": "png"})
}

/// `--public-url`, else `http://` + the request's `Host`.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.config.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    format!("http://{host}")
}

async fn run(state: &Arc<AppState>, headers: &HeaderMap, p: Params, format: ResponseFormat) -> Result<Response, OpenAiError> {
    let request = to_request(state, p)?;
    let job = state.submit(request)?;
    let out = state.wait(&job).await?;
    Ok(Json(images_response(state, headers, &out, format)).into_response())
}

/// `POST /v1/images/generations`.
pub async fn generations(State(state): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Body) -> Result<Response, OpenAiError> {
    let body = read_body(body, state.config.max_body_bytes).await?;
    let f = Fields::parse(&body)?;
    let (p, format) = openai_params(&state, &f)?;
    run(&state, &headers, p, format).await
}

/// `POST /v1/images/edits`: multipart `image` (`image[]`), optional `mask`, and the fields of
/// generations as text parts. OpenAI's masks mark what to repaint by transparency (alpha 0); a
/// mask without alpha is read as `kiln generate --mask` reads one (white repaints).
pub async fn edits(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Result<Response, OpenAiError> {
    use axum::extract::FromRequest as _;
    let (parts, body) = request.into_parts();
    let headers = parts.headers.clone();
    let limit = state.config.max_body_bytes;
    let body = read_body(body, limit).await?;
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(body));
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| ApiError::bad_request(format!("the body must be multipart/form-data: {}", e.body_text())))?;
    let mut fields = serde_json::Map::new();
    let (mut image, mut mask) = (None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                let text = e.body_text();
                return Err(if text.contains("limit") {
                    ApiError::bad_request(format!("the request body is larger than {limit} bytes (--max-body-mb)")).with_code("body_too_large")
                } else {
                    ApiError::bad_request(format!("the multipart body could not be read: {text}"))
                }
                .into());
            }
        };
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(|e| ApiError::bad_request(format!("multipart part {name:?} could not be read: {}", e.body_text())))?;
        match name.as_str() {
            "image" | "image[]" => {
                if image.is_none() {
                    image = Some(bytes);
                }
            }
            "mask" => mask = Some(bytes),
            _ => {
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::invalid(&name, format!("{name} must be UTF-8 text")))?;
                // numbers and booleans as JSON, everything else as a string
                let value = match name.as_str() {
                    "n" | "steps" | "seed" | "guidance_scale" | "strength" | "clip_skip" | "karras" => serde_json::from_str(&text).unwrap_or(Value::String(text)),
                    "loras" => serde_json::from_str(&text).map_err(|_| ApiError::invalid("loras", "loras must be JSON: [{\"name\", \"scale\"}]"))?,
                    _ => Value::String(text),
                };
                fields.insert(name, value);
            }
        }
    }
    let f = Fields::from_map(fields);
    let (mut p, format) = openai_params(&state, &f)?;
    let image = image.ok_or_else(|| ApiError::invalid("image", "image is required (a PNG or JPEG file part)"))?;
    let mask = match mask {
        None => None,
        Some(bytes) => Some(openai_mask(&bytes, state.config.max_size)?),
    };
    let (init, grey) = read_init(&state, &image, mask.as_deref(), p.size, "image", "mask")?;
    p.size = Some((init.width() as usize, init.height() as usize));
    p.init_image = Some(init);
    p.mask = grey;
    run(&state, &headers, p, format).await
}

/// An OpenAI mask as a grey PNG kiln reads (white repaints): transparent pixels (alpha 0) white,
/// the rest black; a mask without alpha is passed on as it is.
fn openai_mask(bytes: &[u8], max: usize) -> Result<Vec<u8>, ApiError> {
    // the header first: a mask larger than --max-size is refused undecoded
    let decoded = crate::api::request::read_image("mask", bytes, None, max)?;
    if !decoded.color().has_alpha() {
        return Ok(bytes.to_vec());
    }
    let rgba = decoded.to_rgba8();
    let grey = image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| image::Luma([if rgba.get_pixel(x, y).0[3] == 0 { 255 } else { 0 }]));
    let mut out = Vec::new();
    grey.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).map_err(|e| ApiError::internal(format!("mask conversion failed: {e}")))?;
    Ok(out)
}

/// `GET /v1/models`: the served models, OpenAI's list shape.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state.models().iter().map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "kiln"})).collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/images/files/{name}`: a picture of `response_format: "url"`, while it is kept.
pub async fn file(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let found = {
        let files = lock(&state.files);
        files.get(&name).filter(|(made, _)| made.elapsed() < state.config.url_ttl).map(|(_, png)| png.clone())
    };
    match found {
        Some(png) => ([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "private, max-age=3600")], png.as_ref().clone()).into_response(),
        None => OpenAiError(ApiError::not_found(format!("no image {name}: it never existed or has expired (--url-ttl)"))).into_response(),
    }
}
