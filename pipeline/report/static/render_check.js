window.addEventListener('load', function () {
  var ok = 0, bad = 0;
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (img.complete && img.naturalWidth > 0) { ok++; } else { bad++; }
  }
  var el = document.getElementById('render-check');
  el.setAttribute('data-images-ok', ok);
  el.setAttribute('data-images-bad', bad);
  el.setAttribute('data-js-errors', window.reportErrors.length);
  el.setAttribute('data-state', 'loaded');
});
