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
  onComplete: showUnavailable,
});

// Services whose own document could not be fetched (info["x-gateway-services"])
// are named above the operations, with the reason; as text, never markup.
function showUnavailable() {
  const services = window.ui.specSelectors.specJson().getIn(["info", "x-gateway-services"]);
  const box = document.getElementById("gateway-unavailable");
  if (!services || !box) return;
  box.replaceChildren();
  services.forEach((state, name) => {
    if (state.get("available")) return;
    const line = document.createElement("div");
    line.dataset.service = name;
    line.textContent = `${name}: unavailable (${state.get("error") || "no document"}); its operations are not listed.`;
    box.append(line);
  });
  box.hidden = box.childElementCount === 0;
}
