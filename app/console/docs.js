// Renders /openapi.json with Swagger UI (served from the swagger-ui-py package; no CDN).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // eslint-disable-next-line no-undef
  SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: false,
    persistAuthorization: false,
    validatorUrl: null, // no request to validator.swagger.io
  });
});
