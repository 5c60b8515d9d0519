// Swagger UI for the gateway's merged document, set up as FastAPI's own
// /docs page is (fastapi/openapi/docs.py), with two differences: no validator
// badge (validatorUrl null: it would send the document to another host), and
// the OAuth2 redirect page is the gateway's copy.
window.ui = SwaggerUIBundle({
  url: "/api/gateway/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  oauth2RedirectUrl: window.location.origin + "/api/gateway/docs/oauth2-redirect.html",
  presets: [SwaggerUIBundle.presets.apis],
});
